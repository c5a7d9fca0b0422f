//! The key service, from inside the VM: lookups in flight, the streams paused on them, the
//! change feed polled on each root context's tick, and the `remote.*` counters.
//!
//! Each root context with a `key_service` owns a [`RemoteCache`]. A stream whose decision
//! asks (see `decide`) is paused; one lookup per digest (or origin) is in flight per root,
//! and every stream waiting on it is decided again when the answer comes, with the answer
//! cached. Calls are issued on the root context, so an answer may arrive for a stream that
//! is gone: `set_effective_context` says so, and that stream is skipped.

use crate::core::decide::{Ask, Failed};
use crate::core::keytable::Digest;
use crate::core::policy::KeyService;
use crate::core::policy::Policy;
use crate::core::remote::cache::RemoteCache;
use crate::core::remote::protocol::{self, ProtocolError};
use crate::core::verdict::RemoteUse;
use crate::filter::handlers::{self, Action, Pass};
use crate::filter::headers;
use crate::filter::host;
use hashbrown::{HashMap, HashSet};
use log::{info, warn};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

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
    /// Lookups in flight: what each is about → the streams waiting on it.
    pending: HashMap<Subject, Vec<u32>>,
    feed: Feed,
    /// Lookups in flight that the feed listed (or reset) meanwhile: their answers may predate
    /// the change, so they decide their waiting streams but are not kept.
    overtaken: HashSet<Subject>,
    /// Cache entries last added to the gauge, so each VM adds only its change.
    reported_entries: i64,
}

#[derive(Default)]
struct Feed {
    /// `None` until the first answer (the poll without `after`).
    cursor: Option<String>,
    in_flight: bool,
    last_poll_ms: i64,
    failures: u32,
}

enum CallKind {
    Lookup { subject: Subject, tag: u128 },
    Feed,
}

struct Waiter {
    root: u32,
    policy: Rc<Policy>,
    /// How the stream was being decided when it asked (lookups so far, and what failed).
    pass: Pass,
}

#[derive(Default)]
struct State {
    roots: HashMap<u32, Root>,
    /// Calls in flight by token, with their root context.
    calls: HashMap<u32, (u32, CallKind)>,
    waiting: HashMap<u32, Waiter>,
    counts: [u32; Counter::ALL.len()],
    failures: FailureLog,
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

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> Option<T> {
    STATE.with(|s| s.try_borrow_mut().ok().map(|mut s| f(&mut s)))
}

/// Runs `f` with the root's cache (`None` when the policy has no key service). `None` when
/// the policy has one but the root holds no cache: the caller fails closed.
pub fn with_cache<T>(
    root: u32,
    has_service: bool,
    f: impl FnOnce(Option<&RemoteCache>) -> T,
) -> Option<T> {
    if !has_service {
        return Some(f(None));
    }
    STATE.with(|s| {
        let s = s.try_borrow().ok()?;
        let cache = &s.roots.get(&root)?.cache;
        Some(f(Some(cache)))
    })
}

/// A root context's new policy: keep its cache when the key service settings are the same.
/// False when a cache is needed and the VM has no random source for its secret.
pub fn configured(root: u32, service: Option<&KeyService>) -> bool {
    with_state(|s| match service {
        None => {
            s.roots.remove(&root);
            true
        }
        Some(service) if s.roots.get(&root).is_some_and(|r| r.service == *service) => true,
        Some(service) => match RemoteCache::new(service.cache) {
            Some(cache) => {
                // Lookups in flight keep their waiting streams: their answers land here.
                let pending = s.roots.remove(&root).map(|r| r.pending).unwrap_or_default();
                s.roots.insert(
                    root,
                    Root {
                        service: service.clone(),
                        cache,
                        pending,
                        feed: Feed::default(),
                        overtaken: HashSet::new(),
                        reported_entries: 0,
                    },
                );
                true
            }
            None => false,
        },
    })
    .unwrap_or(false)
}

pub fn is_waiting(stream: u32) -> bool {
    with_state(|s| s.waiting.contains_key(&stream)).unwrap_or(false)
}

/// Starts (or joins) the lookup a stream's decision asked for, and pauses the stream. When
/// no lookup can be started, decides again as if it had failed.
pub fn ask(
    stream: u32,
    root: u32,
    policy: Rc<Policy>,
    ask: Ask,
    origin: &[u8],
    pass: Pass,
) -> Action {
    let (subject, tag) = match ask {
        Ask::Key { tag, digest } => (Subject::Key(digest), tag),
        Ask::Origin => (Subject::Origin(origin.into()), 0),
    };
    let started = with_state(|s| {
        if pass.asks >= 2 {
            return false;
        }
        let Some(r) = s.roots.get_mut(&root) else { return false };
        if let Some(waiters) = r.pending.get_mut(&subject) {
            waiters.push(stream);
        } else {
            if r.pending.len() >= r.service.max_pending as usize {
                s.counts[Counter::Errors as usize] += 1;
                return false;
            }
            let path = match &subject {
                Subject::Key(digest) => protocol::key_path(&r.service.path_prefix, digest),
                Subject::Origin(o) => protocol::origin_path(&r.service.path_prefix, o),
            };
            let Some(token) = call(&r.service, &path) else {
                s.counts[Counter::Errors as usize] += 1;
                return false;
            };
            s.counts[Counter::Lookups as usize] += 1;
            r.pending.insert(subject.clone(), vec![stream]);
            s.calls.insert(token, (root, CallKind::Lookup { subject: subject.clone(), tag }));
        }
        let pass = Pass { asks: pass.asks + 1, ..pass };
        s.waiting.insert(stream, Waiter { root, policy: Rc::clone(&policy), pass });
        true
    })
    .unwrap_or(false);
    if started {
        return Action::Pause;
    }
    let failed = pass.failed.and(subject.failure());
    handlers::serve(stream, root, policy, Pass { failed, ..pass })
}

/// A GET to the key service; its token, or `None` when the host refused it.
fn call(service: &KeyService, path: &str) -> Option<u32> {
    let request = headers::serialize(&[
        (b":method", b"GET"),
        (b":path", path.as_bytes()),
        (b":authority", service.authority.as_bytes()),
        (b"accept", b"application/json"),
    ]);
    host::http_call(&service.cluster, &request, service.timeout_ms)
}

/// An answer (or a failure: no headers, a timeout's 504) for one of our calls.
pub fn call_response(_root: u32, token: u32, body_size: usize) {
    let Some(Some((root, kind))) = with_state(|s| s.calls.remove(&token)) else { return };
    let answer = read_answer(body_size);
    match kind {
        CallKind::Feed => feed_answer(root, answer),
        CallKind::Lookup { subject, tag } => {
            lookup_answer(root, subject.clone(), tag, answer);
            let overtaken = with_state(|s| {
                s.roots.get_mut(&root).is_some_and(|r| r.overtaken.remove(&subject))
            });
            if overtaken == Some(true) {
                forget(root, &subject);
            }
        }
    }
}

/// The status and, for a usable 200, the body.
struct Answer {
    status: u32,
    body: Result<Vec<u8>, ProtocolError>,
}

fn read_answer(body_size: usize) -> Answer {
    let map = host::http_call_response_headers().unwrap_or_default();
    let (mut status, mut content_type) = (0, None);
    for (name, value) in headers::pairs(&map) {
        match name {
            b":status" => {
                status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
            }
            b"content-type" => content_type = Some(value.to_vec()),
            _ => {}
        }
    }
    let body = if status == 200 {
        protocol::check_body(content_type.as_deref(), body_size).and_then(|()| {
            host::http_call_response_body(body_size)
                .ok_or_else(|| ProtocolError("body could not be read".into()))
        })
    } else {
        Ok(Vec::new())
    };
    Answer { status, body }
}

fn lookup_answer(root: u32, subject: Subject, tag: u128, answer: Answer) {
    let now = host::now_ms().unwrap_or(0);
    let outcome: Result<(), String> = match (&subject, answer.status, &answer.body) {
        (_, 200, Err(e)) => Err(e.to_string()),
        (Subject::Key(digest), 200, Ok(body)) => match protocol::parse_key(body, digest) {
            Ok(entry) => {
                cached(root, |c| c.insert(tag, *digest, Some(entry), now));
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        (Subject::Key(digest), 404, _) => {
            cached(root, |c| c.insert(tag, *digest, None, now));
            Ok(())
        }
        (Subject::Origin(origin), 200, Ok(body)) => match protocol::parse_origin(body, origin) {
            Ok(entries) => {
                cached(root, |c| c.insert_origin(origin, entries, now));
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        (_, 0, _) => Err("no answer (unreachable, reset or refused)".into()),
        (_, status, _) => Err(format!("status {status}")),
    };
    let failed = outcome.is_err();
    if let Err(reason) = &outcome {
        // At most one line a second per VM: a flood of keys against a failing service must
        // not flood the log. The count says what was not logged.
        let quiet = with_state(|s| s.failures.note(now)).unwrap_or(None);
        if let Some(unlogged) = quiet {
            let what = match &subject {
                Subject::Key(d) => format!("key {}", &crate::core::hex::encode(d)[..8]),
                Subject::Origin(_) => "origin".to_string(),
            };
            warn!("key service lookup of {what} failed: {reason} ({unlogged} more failures not logged since the last line)");
        }
    }
    let resumed = with_state(|s| {
        if failed {
            s.counts[Counter::Errors as usize] += 1;
        }
        let streams = s.roots.get_mut(&root).and_then(|r| r.pending.remove(&subject));
        streams
            .unwrap_or_default()
            .into_iter()
            .filter_map(|stream| s.waiting.remove(&stream).map(|w| (stream, w)))
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    resume(resumed, if failed { subject.failure() } else { Failed::NONE });
}

/// Decides streams that waited for a lookup again, with its answer now cached (or failed).
fn resume(streams: Vec<(u32, Waiter)>, failed: Failed) {
    for (stream, waiter) in streams {
        // A stream reset while it waited is gone: nothing to answer.
        if !host::set_effective_context(stream) {
            continue;
        }
        let pass = Pass { resumed: true, failed: failed.and(waiter.pass.failed), ..waiter.pass };
        handlers::serve(stream, waiter.root, waiter.policy, pass);
    }
}

/// Drops a lookup's answer again (see `Root::overtaken`).
fn forget(root: u32, subject: &Subject) {
    with_state(|s| {
        if let Some(r) = s.roots.get_mut(&root) {
            match subject {
                Subject::Key(digest) => r.cache.invalidate(digest),
                Subject::Origin(origin) => r.cache.invalidate_origin(Some(origin)),
            };
        }
    });
}

/// Applies `f` to a root's cache and counts what it evicted.
fn cached(root: u32, f: impl FnOnce(&mut RemoteCache) -> u32) {
    with_state(|s| {
        if let Some(r) = s.roots.get_mut(&root) {
            let evicted = f(&mut r.cache);
            s.counts[Counter::Evictions as usize] += evicted;
        }
    });
}

/// The root's tick: forget gone roots, poll the feed when due, flush the counters.
pub fn tick(root: u32, gone: &[u32]) {
    let now = host::now_ms().unwrap_or(0);
    let flush = with_state(|s| {
        let (mut orphans, mut entries_delta) = (Vec::new(), 0);
        for id in gone {
            if let Some(r) = s.roots.remove(id) {
                orphans.extend(r.pending.into_values().flatten());
                entries_delta -= r.reported_entries;
            }
        }
        let orphans: Vec<(u32, Waiter)> =
            orphans.into_iter().filter_map(|st| s.waiting.remove(&st).map(|w| (st, w))).collect();
        if let Some(r) = s.roots.get_mut(&root) {
            let due = now - r.feed.last_poll_ms >= i64::from(r.service.changes_poll_ms);
            if due && !r.feed.in_flight {
                r.feed.last_poll_ms = now;
                let path = protocol::changes_path(&r.service.path_prefix, r.feed.cursor.as_deref());
                match call(&r.service, &path) {
                    Some(token) => {
                        r.feed.in_flight = true;
                        s.calls.insert(token, (root, CallKind::Feed));
                    }
                    None => {
                        s.counts[Counter::FeedErrors as usize] += 1;
                        r.feed.failures += 1;
                    }
                }
            }
        }
        for r in s.roots.values_mut() {
            let n = r.cache.len() as i64;
            entries_delta += n - r.reported_entries;
            r.reported_entries = n;
        }
        (std::mem::take(&mut s.counts), entries_delta, orphans)
    });
    let Some((counts, entries_delta, orphans)) = flush else { return };
    // Streams that waited on a root the host deleted: their answers will not come.
    resume(orphans, Failed::BOTH);
    let m = metrics();
    for (n, id) in counts.iter().zip(m.counters.iter()) {
        if let (true, Some(id)) = (*n > 0, id) {
            host::add(*id, i64::from(*n));
        }
    }
    if let (true, Some(id)) = (entries_delta != 0, m.entries) {
        host::add(id, entries_delta);
    }
}

fn feed_answer(root: u32, answer: Answer) {
    let changes = match (answer.status, answer.body) {
        (200, Ok(body)) => protocol::parse_changes(&body).map_err(|e| e.to_string()),
        (200, Err(e)) => Err(e.to_string()),
        (0, _) => Err("no answer".to_string()),
        (status, _) => Err(format!("status {status}")),
    };
    with_state(|s| {
        let Some(r) = s.roots.get_mut(&root) else { return };
        r.feed.in_flight = false;
        let changes = match changes {
            Ok(c) => c,
            Err(reason) => {
                s.counts[Counter::FeedErrors as usize] += 1;
                r.feed.failures += 1;
                // Rate-limited: the first failure, then one line per 60 polls.
                if r.feed.failures % 60 == 1 {
                    warn!("key service change feed failed ({} times in a row): {reason}; cached answers live out their TTLs", r.feed.failures);
                }
                return;
            }
        };
        if r.feed.failures > 0 {
            info!("key service change feed is back after {} failures", r.feed.failures);
            r.feed.failures = 0;
        }
        let mut dropped = 0u32;
        if r.feed.cursor.is_none() || changes.reset {
            // The first poll learns where the feed is: answers cached before it may predate
            // changes it will never list, so they go too, and so do those in flight.
            dropped += r.cache.len() as u32;
            r.cache.clear();
            r.overtaken.extend(r.pending.keys().cloned());
        } else {
            for digest in &changes.keys {
                dropped += u32::from(r.cache.invalidate(digest));
                let subject = Subject::Key(*digest);
                if r.pending.contains_key(&subject) {
                    r.overtaken.insert(subject);
                }
            }
            for origin in &changes.origins {
                dropped += u32::from(r.cache.invalidate_origin(origin.as_deref()));
                match origin {
                    Some(o) => {
                        let subject = Subject::Origin(o.clone());
                        if r.pending.contains_key(&subject) {
                            r.overtaken.insert(subject);
                        }
                    }
                    None => r.overtaken.extend(
                        r.pending.keys().filter(|s| matches!(s, Subject::Origin(_))).cloned(),
                    ),
                }
            }
        }
        r.feed.cursor = Some(changes.cursor);
        s.counts[Counter::Invalidations as usize] += dropped;
    });
}

/// Counts what the cache contributed to a first-pass verdict.
pub fn count_use(used: RemoteUse) {
    let counter = match used {
        RemoteUse::None => return,
        RemoteUse::Hit | RemoteUse::Stale => Counter::CacheHits,
        RemoteUse::NegativeHit => Counter::NegativeHits,
    };
    with_state(|s| s.counts[counter as usize] += 1);
}

/// The `remote.*` counters (the 503s are `keygate.remote.unavailable`, an outcome).
#[derive(Clone, Copy)]
enum Counter {
    Lookups,
    CacheHits,
    NegativeHits,
    Errors,
    Invalidations,
    FeedErrors,
    Evictions,
}

impl Counter {
    const ALL: [Counter; 7] = [
        Counter::Lookups,
        Counter::CacheHits,
        Counter::NegativeHits,
        Counter::Errors,
        Counter::Invalidations,
        Counter::FeedErrors,
        Counter::Evictions,
    ];

    const fn name(self) -> &'static str {
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

struct Metrics {
    counters: [Option<u32>; Counter::ALL.len()],
    entries: Option<u32>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        counters: Counter::ALL.map(|c| host::define_counter(c.name())),
        entries: host::define_gauge("keygate.remote.cache_entries"),
    })
}
