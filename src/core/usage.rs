//! Usage counting: what one VM decided, per key and per minute, sealed into batches for the
//! key service (`POST {path_prefix}/usage`, see docs/remote-keys.md).
//!
//! A [`Tally`] holds one minute: for each key id, how many requests were decided with each
//! [`Outcome`] and how many upstream answers came back in each status class; requests
//! without a key (public endpoints, missing or malformed headers) by outcome only. When a
//! request of the next minute arrives, or the flush interval ends, the minute is sealed and
//! written as batches of at most [`MAX_BATCH_BYTES`], each with an id of its own, so a batch
//! sent twice (its answer lost) is counted once by the service.
//!
//! Memory is bounded: past `max_keys` distinct keys in a flush interval, further keys are counted
//! together in an `other` row, and how many requests went there is counted too.

use crate::core::verdict::Outcome;
use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::rc::Rc;

/// The largest batch body, in bytes.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Upstream answer classes, in the order of [`Row::upstream`].
pub const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "429", "5xx"];
const OUTCOMES: usize = Outcome::ALL.len();

/// The usage settings of a configuration (`usage: {flush_ms, max_keys, upstream_status}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    pub flush_ms: u64,
    pub max_keys: usize,
    /// Whether forwarded requests wait for their upstream status to be counted.
    pub upstream_status: bool,
}

impl Default for UsageSettings {
    fn default() -> UsageSettings {
        UsageSettings { flush_ms: 10_000, max_keys: 10_000, upstream_status: false }
    }
}

/// The counts of one key (or of the `other` row) in one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub owner: Option<Rc<str>>,
    /// Requests by outcome, indexed like `Outcome::ALL`.
    pub decided: [u64; OUTCOMES],
    /// Upstream answers by class, indexed like [`CLASSES`].
    pub upstream: [u64; 5],
}

impl Row {
    fn is_empty(&self) -> bool {
        self.decided.iter().chain(self.upstream.iter()).all(|&n| n == 0)
    }

    fn add(&mut self, other: &Row) {
        for (a, b) in self.decided.iter_mut().zip(other.decided.iter()) {
            *a += b;
        }
        for (a, b) in self.upstream.iter_mut().zip(other.upstream.iter()) {
            *a += b;
        }
    }

    /// `{"allowed": 3, "upstream_2xx": 3}`: the non-zero counts.
    fn write_counts(&self, out: &mut String) {
        out.push('{');
        let mut first = true;
        let mut put = |out: &mut String, name: &str, prefix: &str, n: u64| {
            if n > 0 {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                let _ = write!(out, "\"{prefix}{name}\": {n}");
            }
        };
        for (outcome, &n) in Outcome::ALL.iter().zip(self.decided.iter()) {
            put(out, usage_name(*outcome), "", n);
        }
        for (class, &n) in CLASSES.iter().zip(self.upstream.iter()) {
            put(out, class, "upstream_", n);
        }
        out.push('}');
    }
}

/// An outcome's name in usage counts: its counter name, `unavailable` for the 503.
pub const fn usage_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Unavailable => "unavailable",
        other => other.name(),
    }
}

/// The class index of an upstream status.
pub const fn class_of(status: u32) -> Option<usize> {
    Some(match status {
        429 => 3,
        200..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        500..=599 => 4,
        _ => return None,
    })
}

/// Where a request was counted, so that its upstream answer is counted beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    Key(Rc<str>, Option<Rc<str>>),
    /// In `other`: the flush interval already held `max_keys` keys.
    Other,
}

/// One VM's counts for the current minute. The minute is the one of the VM's last tick
/// ([`Tally::roll`]), so a request is counted at most a tick period off.
#[derive(Debug, Default)]
pub struct Tally {
    /// The minute counted (Unix milliseconds of its start).
    minute: i64,
    keys: HashMap<Rc<str>, Row>,
    other: Row,
    /// Requests counted in `other` because `max_keys` keys were already held.
    overflow: u64,
    /// The same, since the tally was made (for a counter).
    overflowed: u64,
    unkeyed: [u64; OUTCOMES],
    max_keys: usize,
}

/// A minute's counts, taken from the tally, to be written as batches.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    pub minute: i64,
    pub keys: Vec<(Rc<str>, Row)>,
    pub other: Row,
    pub overflow: u64,
    pub unkeyed: [u64; OUTCOMES],
}

/// One batch: its id and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: String,
    pub body: String,
    /// How many requests it counts (for what is dropped, should it ever be).
    pub requests: u64,
}

fn minute_of(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(60_000)
}

impl Tally {
    pub fn new(max_keys: usize, now_ms: i64) -> Tally {
        Tally { max_keys, minute: minute_of(now_ms), ..Tally::default() }
    }

    /// The row of `key` in the current minute (its own, or `other` past `max_keys`), and the
    /// id it is held under. One hash lookup when the key is already held. `request`: a
    /// request is being counted (not an answer), so one sent to `other` counts as overflow.
    fn row(
        &mut self,
        key: &str,
        owner: Option<&str>,
        request: bool,
    ) -> (&mut Row, Option<Rc<str>>) {
        let full = self.keys.len() >= self.max_keys;
        match self.keys.entry_ref(key) {
            EntryRef::Occupied(o) => {
                let id = Rc::clone(o.key());
                (o.into_mut(), Some(id))
            }
            EntryRef::Vacant(_) if full => {
                if request {
                    self.overflow += 1;
                    self.overflowed += 1;
                }
                (&mut self.other, None)
            }
            EntryRef::Vacant(v) => {
                let row = Row { owner: owner.map(Rc::from), ..Row::default() };
                let o = v.insert_entry(row);
                let id = Rc::clone(o.key());
                (o.into_mut(), Some(id))
            }
        }
    }

    /// A request decided, with the key it presented (id and owner) when the filter knows it:
    /// where it was counted.
    pub fn decided(
        &mut self,
        key: Option<(&str, Option<&str>)>,
        outcome: Outcome,
    ) -> Option<Counted> {
        let Some((id, owner)) = key else {
            self.unkeyed[outcome as usize] += 1;
            return None;
        };
        let (row, id) = self.row(id, owner, true);
        row.decided[outcome as usize] += 1;
        let owner = row.owner.clone();
        Some(match id {
            Some(id) => Counted::Key(id, owner),
            None => Counted::Other,
        })
    }

    /// The upstream's answer to a request counted as `counted`, in the current minute.
    pub fn responded(&mut self, counted: &Counted, status: u32) {
        let Some(class) = class_of(status) else { return };
        let row = match counted {
            Counted::Key(id, owner) => match self.keys.get_mut(id) {
                Some(row) => row,
                // Counted in a minute since sealed: the answer belongs to this one.
                None => self.row(id, owner.as_deref(), false).0,
            },
            Counted::Other => &mut self.other,
        };
        row.upstream[class] += 1;
    }

    /// The VM's tick at `now_ms`: a new minute seals the one counted so far.
    pub fn roll(&mut self, now_ms: i64) -> Option<Sealed> {
        let minute = minute_of(now_ms);
        if minute == self.minute {
            return None;
        }
        let sealed = self.seal();
        self.minute = minute;
        sealed
    }

    /// Requests counted in `other` since the tally was made.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Takes everything counted so far (`None` when nothing was).
    pub fn seal(&mut self) -> Option<Sealed> {
        let empty =
            self.keys.is_empty() && self.other.is_empty() && self.unkeyed.iter().all(|&n| n == 0);
        if empty {
            return None;
        }
        let mut keys: Vec<(Rc<str>, Row)> = self.keys.drain().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(Sealed {
            minute: self.minute,
            keys,
            other: std::mem::take(&mut self.other),
            overflow: std::mem::take(&mut self.overflow),
            unkeyed: std::mem::take(&mut self.unkeyed),
        })
    }
}

impl Sealed {
    /// Every count of this minute in one row (the keys' and `other`).
    pub fn total(&self) -> Row {
        let mut all = self.other.clone();
        for (_, row) in &self.keys {
            all.add(row);
        }
        all
    }

    /// The batches of this minute, each at most `max_bytes`, numbered from `*seq` on.
    /// `vm` names this VM (random, so two VMs never share a batch id).
    pub fn batches(&self, vm: &str, seq: &mut u64, max_bytes: usize) -> Vec<Batch> {
        let mut out = Vec::new();
        let mut entries = String::new();
        let mut count = 0usize;
        let mut extra = String::new();
        if !self.other.is_empty() {
            extra.push_str(", \"other\": ");
            self.other.write_counts(&mut extra);
            let _ = write!(extra, ", \"overflow\": {}", self.overflow);
        }
        if self.unkeyed.iter().any(|&n| n > 0) {
            let row = Row { decided: self.unkeyed, ..Row::default() };
            extra.push_str(", \"unkeyed\": ");
            row.write_counts(&mut extra);
        }
        let decided = |row: &Row| row.decided.iter().sum::<u64>();
        let mut requests = decided(&self.other) + self.unkeyed.iter().sum::<u64>();
        let mut flush =
            |entries: &mut String, extra: &mut String, requests: &mut u64, seq: &mut u64| {
                *seq += 1;
                let id = format!("{vm}-{seq}");
                let body = format!(
                    "{{\"batch\": \"{id}\", \"minute\": {}, \"keys\": [{entries}]{extra}}}",
                    self.minute
                );
                entries.clear();
                extra.clear();
                out.push(Batch { id, body, requests: std::mem::take(requests) });
            };
        let fixed = 64 + vm.len() + 20 + extra.len();
        for (id, row) in &self.keys {
            let mut entry = String::new();
            let _ = write!(entry, "{{\"id\": \"{id}\"");
            if let Some(owner) = &row.owner {
                let _ = write!(entry, ", \"owner\": {}", json_string(owner));
            }
            entry.push_str(", \"counts\": ");
            row.write_counts(&mut entry);
            entry.push('}');
            if count > 0 && fixed + entries.len() + 2 + entry.len() > max_bytes {
                flush(&mut entries, &mut extra, &mut requests, seq);
                count = 0;
            }
            if count > 0 {
                entries.push_str(", ");
            }
            entries.push_str(&entry);
            requests += decided(row);
            count += 1;
        }
        if count > 0 || !extra.is_empty() {
            flush(&mut entries, &mut extra, &mut requests, seq);
        }
        out
    }
}

/// Batches held by one VM until the key service has taken them. One is in flight at a time,
/// oldest first; a failed one is sent again after [`RETRY_MS`]. At most [`MAX_HELD_BYTES`]
/// are held: past that the oldest batch goes, and [`Outbox::dropped`] counts its requests.
#[derive(Debug)]
pub struct Outbox {
    /// Random per VM, so that batch ids never collide between VMs.
    vm: String,
    seq: u64,
    queue: VecDeque<Batch>,
    bytes: usize,
    in_flight: Option<u32>,
    next_try_ms: i64,
    last_flush_ms: i64,
    /// Requests in batches dropped because too many were held.
    pub dropped: u64,
}

/// What became of a batch sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Taken,
    Refused,
    Retry,
    NotOurs,
}

/// How long after a failed delivery a batch is sent again.
pub const RETRY_MS: i64 = 1_000;
/// The most batch bytes one VM holds for the key service.
pub const MAX_HELD_BYTES: usize = 4 * 1024 * 1024;

impl Outbox {
    pub fn new(vm: String, now_ms: i64) -> Outbox {
        Outbox {
            vm,
            seq: 0,
            queue: VecDeque::new(),
            bytes: 0,
            in_flight: None,
            next_try_ms: 0,
            last_flush_ms: now_ms,
            dropped: 0,
        }
    }

    /// Whether the flush interval has passed since the last flush (which it then starts again).
    pub fn flush_due(&mut self, now_ms: i64, flush_ms: u64) -> bool {
        let due = now_ms - self.last_flush_ms >= flush_ms as i64;
        if due {
            self.last_flush_ms = now_ms;
        }
        due
    }

    /// Holds a sealed minute's batches for delivery.
    pub fn hold(&mut self, sealed: &Sealed) {
        for batch in sealed.batches(&self.vm, &mut self.seq, MAX_BATCH_BYTES) {
            self.bytes += batch.body.len();
            self.queue.push_back(batch);
        }
        // Never the batch in flight: its answer would then match another.
        let keep = usize::from(self.in_flight.is_some());
        while self.bytes > MAX_HELD_BYTES && self.queue.len() > keep.max(1) {
            let Some(old) = self.queue.remove(keep) else { break };
            self.bytes -= old.body.len();
            self.dropped += old.requests;
        }
    }

    /// The batch to send now, if any: none while one is in flight or before a retry is due.
    pub fn next(&self, now_ms: i64) -> Option<&Batch> {
        if self.in_flight.is_some() || now_ms < self.next_try_ms {
            return None;
        }
        self.queue.front()
    }

    /// The front batch went out as call `token`; `None`: the host refused it at once.
    pub fn sent(&mut self, token: Option<u32>, now_ms: i64) {
        match token {
            Some(token) => self.in_flight = Some(token),
            None => self.next_try_ms = now_ms + RETRY_MS,
        }
    }

    pub fn expects(&self, token: u32) -> bool {
        self.in_flight == Some(token)
    }

    /// The answer to call `token`, by its HTTP status (0: none came): a 2xx took the batch;
    /// a 4xx refused it for good (it would be refused again), so it goes and its requests
    /// are counted as dropped; anything else sends it again after [`RETRY_MS`].
    pub fn answered(&mut self, token: u32, status: u32, now_ms: i64) -> Delivery {
        if self.in_flight != Some(token) {
            return Delivery::NotOurs;
        }
        self.in_flight = None;
        let delivery = match status {
            200..=299 => Delivery::Taken,
            400..=499 => Delivery::Refused,
            _ => Delivery::Retry,
        };
        if delivery == Delivery::Retry {
            self.next_try_ms = now_ms + RETRY_MS;
        } else if let Some(done) = self.queue.pop_front() {
            self.bytes -= done.body.len();
            if delivery == Delivery::Refused {
                self.dropped += done.requests;
            }
        }
        delivery
    }

    /// Batches held (in flight included).
    pub fn held(&self) -> usize {
        self.queue.len()
    }
}

/// A JSON string literal (owners may hold quotes and backslashes).
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z, a minute's start

    fn key(
        id: &'static str,
        owner: Option<&'static str>,
    ) -> Option<(&'static str, Option<&'static str>)> {
        Some((id, owner))
    }

    #[test]
    fn requests_are_counted_per_key_and_outcome_and_a_new_minute_seals_the_last() {
        let mut t = Tally::new(10, T0 + 5);
        let a = t.decided(key("a", Some("acme")), Outcome::Allowed);
        assert_eq!(a, Some(Counted::Key("a".into(), Some("acme".into()))));
        t.decided(key("a", Some("acme")), Outcome::Allowed);
        let a = a.unwrap_or(Counted::Other);
        t.responded(&a, 200);
        t.responded(&a, 429);
        t.decided(key("b", None), Outcome::DeniedExpired);
        assert_eq!(t.decided(None, Outcome::Public), None, "no key: nothing to answer to");
        assert_eq!(t.roll(T0 + 59_999), None, "the same minute");
        let Some(sealed) = t.roll(T0 + 60_000) else { unreachable!("the minute was not sealed") };
        assert_eq!(sealed.minute, T0);
        assert_eq!(sealed.keys.len(), 2);
        let [(a_id, a_row), (b_id, b_row)] = [&sealed.keys[0], &sealed.keys[1]];
        assert_eq!((&**a_id, a_row.owner.as_deref()), ("a", Some("acme")));
        assert_eq!(a_row.decided[Outcome::Allowed as usize], 2);
        assert_eq!(a_row.upstream, [1, 0, 0, 1, 0]);
        assert_eq!((&**b_id, b_row.decided[Outcome::DeniedExpired as usize]), ("b", 1));
        assert_eq!(sealed.unkeyed[Outcome::Public as usize], 1);
        // An answer that comes in the next minute counts there, under the same key and owner.
        t.responded(&a, 503);
        let next = t.seal().unwrap_or_default();
        assert_eq!(next.minute, T0 + 60_000);
        assert_eq!((&*next.keys[0].0, next.keys[0].1.owner.as_deref()), ("a", Some("acme")));
        assert_eq!(next.keys[0].1.upstream, [0, 0, 0, 0, 1]);
        assert_eq!(t.seal(), None, "nothing more");
        assert_eq!(t.roll(T0 + 120_000), None, "an empty minute seals nothing");
    }

    #[test]
    fn past_max_keys_requests_go_to_other_and_are_counted() {
        let mut t = Tally::new(2, T0);
        let mut counted = Vec::new();
        for id in ["a", "b", "c", "d", "a", "c"] {
            counted.push(t.decided(Some((id, None)), Outcome::Allowed));
        }
        assert_eq!(counted[2], Some(Counted::Other));
        if let Some(c) = &counted[3] {
            t.responded(c, 204);
        }
        let sealed = t.seal().unwrap_or_default();
        assert_eq!(sealed.keys.iter().map(|k| &*k.0).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(sealed.other.decided[Outcome::Allowed as usize], 3);
        assert_eq!(sealed.other.upstream[0], 1);
        assert_eq!(sealed.overflow, 3);
        assert_eq!(sealed.total().decided[Outcome::Allowed as usize], 6, "nothing dropped");
        // An answer whose key has no room in the next interval counts in `other`, but is no
        // request: the overflow count stays the requests'.
        let mut t = Tally::new(1, T0);
        let first = t.decided(Some(("a", None)), Outcome::Allowed);
        t.seal();
        t.decided(Some(("b", None)), Outcome::Allowed);
        if let Some(a) = &first {
            t.responded(a, 200);
        }
        let sealed = t.seal().unwrap_or_default();
        assert_eq!((sealed.other.upstream[0], sealed.overflow, t.overflowed()), (1, 0, 0));
    }

    #[test]
    fn a_batch_is_json_with_non_zero_counts_only() {
        let mut t = Tally::new(10, T0);
        if let Some(web) = t.decided(key("web", Some("ac\"me")), Outcome::Allowed) {
            t.responded(&web, 503);
        }
        t.decided(key("cli", None), Outcome::Unavailable);
        t.decided(None, Outcome::DeniedMalformed);
        let mut seq = 0;
        let batches = t.seal().unwrap_or_default().batches("vm1", &mut seq, MAX_BATCH_BYTES);
        assert_eq!(seq, 1);
        assert_eq!(batches.len(), 1);
        assert_eq!((batches[0].id.as_str(), batches[0].requests), ("vm1-1", 3));
        let doc: serde_json::Value = serde_json::from_str(&batches[0].body).unwrap_or_default();
        assert_eq!(
            doc,
            serde_json::json!({
                "batch": "vm1-1", "minute": T0,
                "keys": [
                    {"id": "cli", "counts": {"unavailable": 1}},
                    {"id": "web", "owner": "ac\"me", "counts": {"allowed": 1, "upstream_5xx": 1}},
                ],
                "unkeyed": {"denied_malformed": 1},
            })
        );
    }

    #[test]
    fn many_keys_go_in_batches_under_the_size_limit_and_every_count_is_in_one() {
        let mut t = Tally::new(200_000, T0);
        for i in 0..100_000 {
            t.decided(Some((&format!("key-{i:06}"), Some("owner-of-many"))), Outcome::Allowed);
        }
        t.decided(None, Outcome::Public);
        let mut seq = 7;
        let batches = t.seal().unwrap_or_default().batches("vm", &mut seq, MAX_BATCH_BYTES);
        assert!(batches.len() > 10);
        let (mut seen, mut requests) = (0u64, 0u64);
        let mut ids = std::collections::HashSet::new();
        for b in &batches {
            assert!(b.body.len() <= MAX_BATCH_BYTES, "{} bytes", b.body.len());
            assert!(ids.insert(b.id.clone()));
            let doc: serde_json::Value = serde_json::from_str(&b.body).unwrap_or_default();
            for k in doc["keys"].as_array().into_iter().flatten() {
                seen += k["counts"]["allowed"].as_u64().unwrap_or(0);
            }
            requests += b.requests;
        }
        assert_eq!((seen, requests), (100_000, 100_001));
        assert_eq!(batches[0].id, "vm-8");
        assert_eq!(seq, 7 + batches.len() as u64);
        assert!(batches[0].body.contains("\"unkeyed\""));
        assert!(!batches[1].body.contains("\"unkeyed\""), "once, in the first batch");
    }

    #[test]
    fn statuses_fall_in_their_classes() {
        assert_eq!(class_of(200), Some(0));
        assert_eq!(class_of(304), Some(1));
        assert_eq!(class_of(404), Some(2));
        assert_eq!(class_of(429), Some(3));
        assert_eq!(class_of(502), Some(4));
        assert_eq!(class_of(101), None);
        assert_eq!(class_of(600), None);
    }

    fn sealed_with(requests: usize) -> Sealed {
        let mut t = Tally::new(1_000_000, T0);
        for i in 0..requests {
            t.decided(Some((&format!("k{i}"), None)), Outcome::Allowed);
        }
        t.seal().unwrap_or_default()
    }

    #[test]
    fn batches_go_one_at_a_time_oldest_first_and_a_failed_one_again_later() {
        let mut o = Outbox::new("vm".into(), T0);
        assert!(!o.flush_due(T0 + 9_999, 10_000));
        assert!(o.flush_due(T0 + 10_000, 10_000));
        assert!(!o.flush_due(T0 + 10_001, 10_000), "the interval starts again");
        o.hold(&sealed_with(1));
        o.hold(&sealed_with(2));
        assert_eq!(o.held(), 2);
        let first = o.next(T0).map(|b| b.id.clone());
        assert_eq!(first.as_deref(), Some("vm-1"));
        o.sent(Some(7), T0);
        assert_eq!(o.next(T0), None, "one in flight at a time");
        assert_eq!(o.answered(8, 200, T0), Delivery::NotOurs);
        assert_eq!(o.answered(7, 503, T0 + 5), Delivery::Retry);
        assert_eq!(o.next(T0 + 5 + RETRY_MS - 1), None, "a failed batch waits");
        assert_eq!(
            o.next(T0 + 5 + RETRY_MS).map(|b| b.id.as_str()),
            Some("vm-1"),
            "and goes again"
        );
        o.sent(None, T0 + 2_000);
        assert_eq!(o.next(T0 + 2_000 + RETRY_MS - 1), None, "refused by the host: later");
        o.sent(Some(9), T0 + 3_500);
        assert!(o.expects(9));
        assert_eq!(o.answered(9, 200, T0 + 3_600), Delivery::Taken);
        assert_eq!(o.next(T0 + 3_600).map(|b| b.id.as_str()), Some("vm-2"));
        assert_eq!((o.held(), o.dropped), (1, 0));
        // A timeout (no status) is tried again; a 4xx is not, and its requests are counted.
        o.sent(Some(10), T0 + 4_000);
        assert_eq!(o.answered(10, 0, T0 + 4_000), Delivery::Retry);
        o.sent(Some(11), T0 + 6_000);
        assert_eq!(o.answered(11, 400, T0 + 6_000), Delivery::Refused);
        assert_eq!((o.held(), o.dropped), (0, 2));
    }

    #[test]
    fn held_batches_are_bounded_and_what_goes_is_counted() {
        let mut o = Outbox::new("vm".into(), T0);
        let one = sealed_with(1_000);
        let size = one.batches("vm", &mut 0, MAX_BATCH_BYTES)[0].body.len();
        o.hold(&one);
        o.sent(Some(1), T0);
        let rounds = MAX_HELD_BYTES / size + 5;
        for _ in 0..rounds {
            o.hold(&one);
        }
        assert!(o.bytes <= MAX_HELD_BYTES, "{} bytes held", o.bytes);
        assert!(o.dropped >= 5_000 && o.dropped % 1_000 == 0, "{} dropped", o.dropped);
        assert_eq!(
            o.held() as u64 * 1_000 + o.dropped,
            (rounds as u64 + 1) * 1_000,
            "every request held or counted as dropped"
        );
        assert_eq!(o.answered(1, 204, T0), Delivery::Taken, "the batch in flight was kept");
    }
}
