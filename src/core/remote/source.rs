//! The remote key source of one VM, without the host: which lookups are in flight, which
//! streams wait on each, what an answer or a feed poll changes, and which streams to decide
//! again, and how.
//!
//! It is driven by events (a decision asked, a call answered, a tick) and answers with what
//! to do next (streams to decide again, counts to flush). The only thing it asks of the host
//! directly is to send a call, through [`Calls`], since the call's token is needed at once;
//! the filter's glue implements it with `proxy_http_call`, the tests with a recorder.
//!
//! A stream whose decision asks is paused; one lookup per digest (or origin) is in flight
//! per root context, and every stream waiting on it is decided again when the answer
//! comes, with the answer cached. Calls are issued on the root context, so an answer may
//! arrive for a stream that is gone; the glue skips those.
//!
//! When the feed lists a key (or origin, or resets) while its lookup is in flight, the
//! answer may predate the change. The streams already waiting arrived before the filter
//! knew of the change: they are decided on the answer they waited for. A stream arriving
//! after it starts a fresh lookup instead of joining, and the old answer is dropped as soon
//! as its streams are decided ([`RemoteSource::settle`]), so it never serves anyone else;
//! if the fresh lookup answered first, the old answer is not cached at all, and its streams
//! are decided on the fresher one.

use crate::core::decide::{Ask, Failed};
use crate::core::hex;
use crate::core::keytable::Digest;
use crate::core::policy::KeyService;
use crate::core::remote::cache::RemoteCache;
use crate::core::remote::feed::{Applied, Feed};
use crate::core::remote::protocol::{self, ProtocolError};
use crate::core::verdict::RemoteUse;
use hashbrown::HashMap;
use log::{info, warn};

/// Sends a GET to the key service, answered within `timeout_ms`: the call's token, or
/// `None` when the host refused it.
pub trait Calls {
    fn get(&mut self, service: &KeyService, path: &str, timeout_ms: u32) -> Option<u32>;
}

/// Which time a stream's request headers are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// After the key service answered what the stream waited for, outside its headers
    /// callback: continuing is then a host call.
    pub resumed: bool,
    /// Lookups that failed (or could not start): decide without them.
    pub failed: Failed,
    /// Lookups the stream has waited for: a decision asks at most a key and an origin.
    pub asks: u8,
}

impl Pass {
    pub const FIRST: Pass = Pass { resumed: false, failed: Failed::NONE, asks: 0 };
}

/// A key service's answer to one call: its status (0 when there was none: unreachable,
/// reset or refused) and, for a usable 200, its body.
pub struct Answer {
    pub status: u32,
    pub body: Result<Vec<u8>, ProtocolError>,
}

/// A stream being decided: under its root context, with the payload (the policy) it is
/// decided under, on its pass. `ask` takes one; answers and ticks hand them back, to decide
/// again.
pub struct Stream<W> {
    pub stream: u32,
    pub root: u32,
    pub payload: W,
    pub pass: Pass,
}

/// What a lookup is about: a key's digest, or an origin's CORS keys.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Subject {
    Key(Digest),
    Origin(Box<[u8]>),
}

impl Subject {
    /// What a failed lookup of this subject means for the decision.
    fn failure(&self) -> Failed {
        match self {
            Subject::Key(_) => Failed::KEY,
            Subject::Origin(_) => Failed::ORIGIN,
        }
    }
}

struct Root {
    service: KeyService,
    cache: RemoteCache,
    /// Lookups in flight that new streams may join: what each is about → its call.
    pending: HashMap<Subject, Lookup>,
    feed: Feed,
    /// Lookups in flight that the feed listed (or reset) meanwhile, by call token → the
    /// streams that waited before the change (see the module comment).
    overtaken: HashMap<u32, Overtaken>,
    /// Cache entries last added to the gauge, so each VM adds only its change.
    reported_entries: i64,
}

struct Lookup {
    token: u32,
    streams: Vec<u32>,
}

/// A lookup in flight that the feed overtook.
struct Overtaken {
    subject: Subject,
    /// The streams that waited for it before the change.
    streams: Vec<u32>,
    /// A lookup started after the change has answered: this answer is not cached at all,
    /// and its streams are decided on the fresher one.
    superseded: bool,
}

enum CallKind {
    Lookup { subject: Subject, tag: u128 },
    Feed,
}

struct Waiter<W> {
    root: u32,
    payload: W,
    /// How the stream was being decided when it asked.
    pass: Pass,
}

impl Root {
    /// Moves the lookups in flight about what `listed` matches out of reach of new streams.
    fn overtake(&mut self, listed: impl Fn(&Subject) -> bool) {
        let overtaken = &mut self.overtaken;
        self.pending.retain(|subject, lookup| {
            if listed(subject) {
                let streams = std::mem::take(&mut lookup.streams);
                let o = Overtaken { subject: subject.clone(), streams, superseded: false };
                overtaken.insert(lookup.token, o);
                false
            } else {
                true
            }
        });
    }
}

/// The `remote.*` counters (the 503s are `keygate.remote.unavailable`, an outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Lookups,
    CacheHits,
    NegativeHits,
    Errors,
    Invalidations,
    FeedErrors,
    Evictions,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::Lookups,
        Counter::CacheHits,
        Counter::NegativeHits,
        Counter::Errors,
        Counter::Invalidations,
        Counter::FeedErrors,
        Counter::Evictions,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Lookups => "keygate.remote.lookups",
            Counter::CacheHits => "keygate.remote.cache_hits",
            Counter::NegativeHits => "keygate.remote.negative_hits",
            Counter::Errors => "keygate.remote.errors",
            Counter::Invalidations => "keygate.remote.invalidations",
            Counter::FeedErrors => "keygate.remote.feed_errors",
            Counter::Evictions => "keygate.remote.evictions",
        }
    }
}

/// Counts since the last flush, indexed by `Counter as usize`.
pub type Counts = [u32; Counter::ALL.len()];

/// What a tick hands the glue.
pub struct Flush<W> {
    pub counts: Counts,
    /// The change of the `remote.cache_entries` gauge.
    pub entries_delta: i64,
    /// Changes the feed is behind, as the service last said (the most of this VM's roots):
    /// the `remote.feed_lag` gauge.
    pub feed_lag: u64,
    /// Streams that waited on a root the host deleted: their answers will not come, so they
    /// are decided again as if every lookup failed.
    pub orphans: Vec<Stream<W>>,
}

/// Rate-limits the lookup-failure log line.
#[derive(Default)]
struct FailureLog {
    last_ms: i64,
    unlogged: u32,
}

impl FailureLog {
    /// `Some(failures not logged since the last line)` when this one may be logged.
    fn note(&mut self, now_ms: i64) -> Option<u32> {
        if self.last_ms != 0 && now_ms - self.last_ms < 1000 {
            self.unlogged += 1;
            return None;
        }
        self.last_ms = now_ms;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// One VM's remote key source; `W` is what a waiting stream carries back (the policy it
/// was decided under).
pub struct RemoteSource<W> {
    roots: HashMap<u32, Root>,
    /// Calls in flight by token, with their root context.
    calls: HashMap<u32, (u32, CallKind)>,
    waiting: HashMap<u32, Waiter<W>>,
    counts: Counts,
    failures: FailureLog,
    /// Overtaken answers to drop once their streams are decided: (root, what).
    unsettled: Vec<(u32, Subject)>,
}

impl<W> Default for RemoteSource<W> {
    fn default() -> Self {
        RemoteSource {
            roots: HashMap::new(),
            calls: HashMap::new(),
            waiting: HashMap::new(),
            counts: [0; Counter::ALL.len()],
            failures: FailureLog::default(),
            unsettled: Vec::new(),
        }
    }
}

impl<W> RemoteSource<W> {
    /// A root context's new policy: its cache is kept when the key service settings are the
    /// same. False when a cache is needed and the VM has no random source for its secret.
    pub fn configure(&mut self, root: u32, service: Option<&KeyService>) -> bool {
        let Some(service) = service else {
            self.roots.remove(&root);
            return true;
        };
        if self.roots.get(&root).is_some_and(|r| r.service == *service) {
            return true;
        }
        let Some(cache) = RemoteCache::new(service.cache) else { return false };
        // Lookups in flight keep their waiting streams: their answers land here. They may
        // predate changes the new feed will list, so all of them count as overtaken.
        let mut overtaken = HashMap::new();
        if let Some(old) = self.roots.remove(&root) {
            overtaken = old.overtaken;
            overtaken.extend(old.pending.into_iter().map(|(subject, l)| {
                (l.token, Overtaken { subject, streams: l.streams, superseded: false })
            }));
        }
        let root_state = Root {
            service: service.clone(),
            cache,
            pending: HashMap::new(),
            feed: Feed::default(),
            overtaken,
            reported_entries: 0,
        };
        self.roots.insert(root, root_state);
        true
    }

    /// The root's cache; `None` when it holds none.
    pub fn cache(&self, root: u32) -> Option<&RemoteCache> {
        self.roots.get(&root).map(|r| &r.cache)
    }

    pub fn is_waiting(&self, stream: u32) -> bool {
        self.waiting.contains_key(&stream)
    }

    /// Counts what the cache contributed to a first-pass verdict.
    pub fn count_use(&mut self, used: RemoteUse) {
        let counter = match used {
            RemoteUse::None => return,
            RemoteUse::Hit | RemoteUse::Stale => Counter::CacheHits,
            RemoteUse::NegativeHit => Counter::NegativeHits,
        };
        self.count(counter, 1);
    }

    fn count(&mut self, counter: Counter, n: u32) {
        let c = &mut self.counts[counter as usize];
        *c = c.saturating_add(n);
    }

    /// A decision asked: starts (or joins) the lookup, and the stream waits for it. When no
    /// lookup can be had (a third ask, too many in flight, the host refused), the stream is
    /// handed back with the pass to decide it again on, as if the lookup had failed.
    pub fn ask(
        &mut self,
        s: Stream<W>,
        ask: Ask,
        origin: &[u8],
        calls: &mut impl Calls,
    ) -> Result<(), Stream<W>> {
        let (subject, tag) = match ask {
            Ask::Key { tag, digest } => (Subject::Key(digest), tag),
            Ask::Origin => (Subject::Origin(origin.into()), 0),
        };
        let Stream { stream, root, payload, pass } = s;
        let failed = Pass { failed: pass.failed.and(subject.failure()), ..pass };
        let failed = |payload| Err(Stream { stream, root, payload, pass: failed });
        if pass.asks >= 2 {
            return failed(payload);
        }
        let Some(r) = self.roots.get_mut(&root) else { return failed(payload) };
        if let Some(lookup) = r.pending.get_mut(&subject) {
            lookup.streams.push(stream);
        } else {
            if r.pending.len() + r.overtaken.len() >= r.service.max_pending as usize {
                self.count(Counter::Errors, 1);
                return failed(payload);
            }
            let path = match &subject {
                Subject::Key(digest) => protocol::key_path(&r.service.path_prefix, digest),
                Subject::Origin(o) => protocol::origin_path(&r.service.path_prefix, o),
            };
            let Some(token) = calls.get(&r.service, &path, r.service.timeout_ms) else {
                self.count(Counter::Errors, 1);
                return failed(payload);
            };
            r.pending.insert(subject.clone(), Lookup { token, streams: vec![stream] });
            self.calls.insert(token, (root, CallKind::Lookup { subject, tag }));
            self.count(Counter::Lookups, 1);
        }
        let pass = Pass { asks: pass.asks + 1, ..pass };
        self.waiting.insert(stream, Waiter { root, payload, pass });
        Ok(())
    }

    /// Whether `token` is one of this VM's calls (so its answer is worth reading).
    pub fn expects(&self, token: u32) -> bool {
        self.calls.contains_key(&token)
    }

    /// The answer to one of our calls, at `now_ms`: the streams to decide again (none for
    /// a feed poll or a call that is not ours). A feed answer that leaves the next poll due
    /// at once (see `feed`) sends it.
    pub fn answered(
        &mut self,
        token: u32,
        answer: Answer,
        now_ms: i64,
        calls: &mut impl Calls,
    ) -> Vec<Stream<W>> {
        let Some((root, kind)) = self.calls.remove(&token) else { return Vec::new() };
        match kind {
            CallKind::Feed => {
                self.feed_answered(root, answer, now_ms);
                self.poll(root, now_ms, calls);
                Vec::new()
            }
            CallKind::Lookup { subject, tag } => {
                self.lookup_answered(root, token, subject, tag, answer, now_ms)
            }
        }
    }

    /// Drops the overtaken answers whose streams have now been decided. The glue calls it
    /// after deciding the streams an answer handed back.
    pub fn settle(&mut self) {
        for (root, subject) in std::mem::take(&mut self.unsettled) {
            let Some(r) = self.roots.get_mut(&root) else { continue };
            match &subject {
                Subject::Key(digest) => r.cache.invalidate(digest),
                Subject::Origin(origin) => r.cache.invalidate_origin(Some(origin)),
            };
        }
    }

    fn lookup_answered(
        &mut self,
        root: u32,
        token: u32,
        subject: Subject,
        tag: u128,
        answer: Answer,
        now_ms: i64,
    ) -> Vec<Stream<W>> {
        let mut evicted = 0;
        let overtaken = self.roots.get_mut(&root).and_then(|r| r.overtaken.remove(&token));
        let superseded = overtaken.as_ref().is_some_and(|o| o.superseded);
        // A root gone while the call was in flight handed its streams back then; the answer
        // is still judged, so that its failures count. A superseded answer is judged, not kept.
        let mut cache = self.roots.get_mut(&root).filter(|_| !superseded).map(|r| &mut r.cache);
        let outcome: Result<(), String> = match (&subject, answer.status, &answer.body) {
            (_, 200, Err(e)) => Err(e.to_string()),
            (Subject::Key(digest), 200, Ok(body)) => match protocol::parse_key(body, digest) {
                Ok(entry) => {
                    if let Some(c) = cache.as_mut() {
                        evicted = c.insert(tag, *digest, Some(entry), now_ms);
                    }
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            (Subject::Key(digest), 404, _) => {
                if let Some(c) = cache.as_mut() {
                    evicted = c.insert(tag, *digest, None, now_ms);
                }
                Ok(())
            }
            (Subject::Origin(origin), 200, Ok(body)) => {
                match protocol::parse_origin(body, origin) {
                    Ok(entries) => {
                        if let Some(c) = cache.as_mut() {
                            evicted = c.insert_origin(origin, entries, now_ms);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            (_, 0, _) => Err("no answer (unreachable, reset or refused)".into()),
            (_, status, _) => Err(format!("status {status}")),
        };
        self.count(Counter::Evictions, evicted);
        let failed = match outcome {
            Ok(()) => Failed::NONE,
            Err(reason) => {
                self.count(Counter::Errors, 1);
                // At most one line a second per VM: a flood of keys against a failing
                // service must not flood the log. The count says what was not logged.
                if let Some(unlogged) = self.failures.note(now_ms) {
                    let what = match &subject {
                        Subject::Key(d) => format!("key {}", &hex::encode(&d[..4])),
                        Subject::Origin(_) => "origin".to_string(),
                    };
                    warn!("key service lookup of {what} failed: {reason} ({unlogged} more failures not logged since the last line)");
                }
                subject.failure()
            }
        };
        let mut streams = Vec::new();
        if let Some(r) = self.roots.get_mut(&root) {
            match overtaken {
                Some(o) => {
                    streams = o.streams;
                    if !superseded {
                        self.unsettled.push((root, subject));
                    }
                }
                None => {
                    if r.pending.get(&subject).is_some_and(|l| l.token == token) {
                        streams = r.pending.remove(&subject).map(|l| l.streams).unwrap_or_default();
                    }
                    if failed == Failed::NONE {
                        for o in r.overtaken.values_mut().filter(|o| o.subject == subject) {
                            o.superseded = true;
                        }
                    }
                }
            }
        }
        self.resume(streams, failed)
    }

    /// The waiting streams among `streams`, to decide again on their next pass.
    fn resume(&mut self, streams: Vec<u32>, failed: Failed) -> Vec<Stream<W>> {
        streams
            .into_iter()
            .filter_map(|stream| {
                let w = self.waiting.remove(&stream)?;
                let pass = Pass { resumed: true, failed: failed.and(w.pass.failed), ..w.pass };
                Some(Stream { stream, root: w.root, payload: w.payload, pass })
            })
            .collect()
    }

    fn feed_answered(&mut self, root: u32, answer: Answer, now_ms: i64) {
        let held =
            self.roots.get(&root).is_some_and(|r| r.feed.holds() && r.service.changes_wait_ms > 0);
        let changes = match (answer.status, answer.body) {
            (200, Ok(body)) => protocol::parse_changes(&body).map_err(|e| e.to_string()),
            // A service that does not know `wait_ms` may refuse it: poll as it expects.
            (400, _) if held => {
                if let Some(r) = self.roots.get_mut(&root) {
                    r.feed.no_wait = true;
                }
                info!("the key service refused a held change-feed poll (400 to wait_ms); polling every changes_poll_ms instead");
                Err("status 400 to wait_ms".to_string())
            }
            (200, Err(e)) => Err(e.to_string()),
            (0, _) => Err("no answer".to_string()),
            (status, _) => Err(format!("status {status}")),
        };
        let Some(r) = self.roots.get_mut(&root) else { return };
        let changes = match changes {
            Ok(c) => c,
            Err(reason) => {
                let (failures, log) = r.feed.failed();
                if log {
                    warn!("key service change feed failed ({failures} times in a row): {reason}; cached answers live out their TTLs");
                }
                self.count(Counter::FeedErrors, 1);
                return;
            }
        };
        let (ended, applied) = r.feed.answered(&changes, now_ms, held);
        if ended > 0 {
            info!("key service change feed is back after {ended} failures");
        }
        let mut dropped = 0u32;
        match applied {
            Applied::Everything => {
                dropped += r.cache.len() as u32;
                r.cache.clear();
                r.overtake(|_| true);
            }
            Applied::Listed(changes) => {
                for digest in &changes.keys {
                    dropped += u32::from(r.cache.invalidate(digest));
                    r.overtake(|s| *s == Subject::Key(*digest));
                }
                for origin in &changes.origins {
                    dropped += u32::from(r.cache.invalidate_origin(origin.as_deref()));
                    match origin {
                        Some(o) => r.overtake(|s| matches!(s, Subject::Origin(x) if x == o)),
                        None => r.overtake(|s| matches!(s, Subject::Origin(_))),
                    }
                }
            }
        }
        self.count(Counter::Invalidations, dropped);
    }

    /// A root context's tick at `now_ms`: forget the roots the host deleted (`gone`), poll
    /// the feed when due, and hand over the counts since the last tick.
    pub fn tick(
        &mut self,
        root: u32,
        gone: &[u32],
        now_ms: i64,
        calls: &mut impl Calls,
    ) -> Flush<W> {
        let (mut orphans, mut entries_delta) = (Vec::new(), 0);
        for id in gone {
            if let Some(r) = self.roots.remove(id) {
                orphans.extend(r.pending.into_values().flat_map(|l| l.streams));
                orphans.extend(r.overtaken.into_values().flat_map(|o| o.streams));
                entries_delta -= r.reported_entries;
            }
        }
        let orphans = self.resume(orphans, Failed::BOTH);
        self.poll(root, now_ms, calls);
        let mut feed_lag = 0;
        for r in self.roots.values_mut() {
            let n = r.cache.len() as i64;
            entries_delta += n - r.reported_entries;
            r.reported_entries = n;
            feed_lag = feed_lag.max(r.feed.behind);
        }
        let counts = std::mem::replace(&mut self.counts, [0; Counter::ALL.len()]);
        Flush { counts, entries_delta, feed_lag, orphans }
    }

    /// Sends the root's next feed poll if it is due. A poll after the first may be held by
    /// the service for `changes_wait_ms`, so its timeout covers that too.
    fn poll(&mut self, root: u32, now_ms: i64, calls: &mut impl Calls) {
        let Some(r) = self.roots.get_mut(&root) else { return };
        if !r.feed.poll_due(now_ms, r.service.changes_poll_ms) {
            return;
        }
        let s = &r.service;
        let held = if r.feed.holds() { s.changes_wait_ms } else { 0 };
        let path = protocol::changes_path(&s.path_prefix, r.feed.cursor.as_deref(), held);
        match calls.get(s, &path, s.timeout_ms.saturating_add(held)) {
            Some(token) => {
                r.feed.sent();
                self.calls.insert(token, (root, CallKind::Feed));
            }
            None => {
                r.feed.refused();
                self.count(Counter::FeedErrors, 1);
            }
        }
    }
}
