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
//! Memory is bounded: past `max_keys` distinct keys in a minute, further keys are counted
//! together in an `other` row, and how many requests went there is counted too.

use crate::core::verdict::Outcome;
use hashbrown::HashMap;
use std::fmt::Write as _;

/// The largest batch body, in bytes.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Upstream answer classes, in the order of [`Row::upstream`].
pub const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "429", "5xx"];
const OUTCOMES: usize = Outcome::ALL.len();

/// The usage settings of a configuration (`usage: {flush_ms, max_keys}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    pub flush_ms: u64,
    pub max_keys: usize,
}

impl Default for UsageSettings {
    fn default() -> UsageSettings {
        UsageSettings { flush_ms: 10_000, max_keys: 10_000 }
    }
}

/// The counts of one key (or of the `other` row) in one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub owner: Option<Box<str>>,
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

/// One VM's counts for the current minute.
#[derive(Debug, Default)]
pub struct Tally {
    /// The minute counted (Unix milliseconds of its start); 0 before the first request.
    minute: i64,
    keys: HashMap<Box<str>, Row>,
    other: Row,
    /// Requests counted in `other` because `max_keys` keys were already held.
    overflow: u64,
    unkeyed: [u64; OUTCOMES],
    max_keys: usize,
}

/// A minute's counts, taken from the tally, to be written as batches.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    pub minute: i64,
    pub keys: Vec<(Box<str>, Row)>,
    pub other: Row,
    pub overflow: u64,
    pub unkeyed: [u64; OUTCOMES],
}

/// One batch: its id and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: String,
    pub body: String,
}

fn minute_of(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(60_000)
}

impl Tally {
    pub fn new(max_keys: usize) -> Tally {
        Tally { max_keys, ..Tally::default() }
    }

    /// The row of `key` in the current minute: its own, or `other` past `max_keys`.
    fn row(&mut self, key: &str, owner: Option<&str>) -> &mut Row {
        if !self.keys.contains_key(key) {
            if self.keys.len() >= self.max_keys {
                self.overflow += 1;
                return &mut self.other;
            }
            let row = Row { owner: owner.map(Box::from), ..Row::default() };
            self.keys.insert(Box::from(key), row);
        }
        // Just found or inserted.
        self.keys.get_mut(key).unwrap_or(&mut self.other)
    }

    /// A new minute seals the one counted so far.
    fn at(&mut self, now_ms: i64) -> Option<Sealed> {
        let minute = minute_of(now_ms);
        if minute == self.minute {
            return None;
        }
        let sealed = self.seal();
        self.minute = minute;
        sealed
    }

    /// A request decided at `now_ms`, with the key it presented (its id and owner) if it was
    /// one the filter knows. Returns the previous minute's counts when this one is new.
    pub fn decided(
        &mut self,
        now_ms: i64,
        key: Option<(&str, Option<&str>)>,
        outcome: Outcome,
    ) -> Option<Sealed> {
        let sealed = self.at(now_ms);
        match key {
            Some((id, owner)) => self.row(id, owner).decided[outcome as usize] += 1,
            None => self.unkeyed[outcome as usize] += 1,
        }
        sealed
    }

    /// The upstream's answer to an allowed request of `key`.
    pub fn responded(
        &mut self,
        now_ms: i64,
        key: (&str, Option<&str>),
        status: u32,
    ) -> Option<Sealed> {
        let sealed = self.at(now_ms);
        if let Some(class) = class_of(status) {
            self.row(key.0, key.1).upstream[class] += 1;
        }
        sealed
    }

    /// Takes everything counted so far (`None` when nothing was).
    pub fn seal(&mut self) -> Option<Sealed> {
        let empty =
            self.keys.is_empty() && self.other.is_empty() && self.unkeyed.iter().all(|&n| n == 0);
        if empty {
            return None;
        }
        let mut keys: Vec<(Box<str>, Row)> = self.keys.drain().collect();
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
        let mut flush = |entries: &mut String, extra: &mut String, seq: &mut u64| {
            *seq += 1;
            let id = format!("{vm}-{seq}");
            let body = format!(
                "{{\"batch\": \"{id}\", \"minute\": {}, \"keys\": [{entries}]{extra}}}",
                self.minute
            );
            entries.clear();
            extra.clear();
            out.push(Batch { id, body });
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
                flush(&mut entries, &mut extra, seq);
                count = 0;
            }
            if count > 0 {
                entries.push_str(", ");
            }
            entries.push_str(&entry);
            count += 1;
        }
        if count > 0 || !extra.is_empty() {
            flush(&mut entries, &mut extra, seq);
        }
        out
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

    #[test]
    fn requests_are_counted_per_key_and_outcome_and_a_new_minute_seals_the_last() {
        let mut t = Tally::new(10);
        assert_eq!(t.decided(T0, Some(("a", Some("acme"))), Outcome::Allowed), None);
        assert_eq!(t.decided(T0 + 1, Some(("a", Some("acme"))), Outcome::Allowed), None);
        assert_eq!(t.responded(T0 + 2, ("a", Some("acme")), 200), None);
        assert_eq!(t.responded(T0 + 3, ("a", Some("acme")), 429), None);
        assert_eq!(t.decided(T0 + 4, Some(("b", None)), Outcome::DeniedExpired), None);
        assert_eq!(t.decided(T0 + 5, None, Outcome::Public), None);
        let sealed = t.decided(T0 + 60_000, None, Outcome::DeniedMissing);
        let Some(sealed) = sealed else { unreachable!("the minute was not sealed") };
        assert_eq!(sealed.minute, T0);
        assert_eq!(sealed.keys.len(), 2);
        let [seq_a, seq_b] = [&sealed.keys[0], &sealed.keys[1]];
        assert_eq!((&*seq_a.0, seq_a.1.owner.as_deref()), ("a", Some("acme")));
        assert_eq!(seq_a.1.decided[Outcome::Allowed as usize], 2);
        assert_eq!(seq_a.1.upstream, [1, 0, 0, 1, 0]);
        assert_eq!(seq_b.1.decided[Outcome::DeniedExpired as usize], 1);
        assert_eq!(sealed.unkeyed[Outcome::Public as usize], 1);
        let next = t.seal().unwrap_or_default();
        assert_eq!((next.minute, next.unkeyed[Outcome::DeniedMissing as usize]), (T0 + 60_000, 1));
        assert_eq!(t.seal(), None, "nothing more");
    }

    #[test]
    fn past_max_keys_requests_go_to_other_and_are_counted() {
        let mut t = Tally::new(2);
        for key in ["a", "b", "c", "d", "a", "c"] {
            t.decided(T0, Some((key, None)), Outcome::Allowed);
        }
        let sealed = t.seal().unwrap_or_default();
        assert_eq!(sealed.keys.iter().map(|k| &*k.0).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(sealed.other.decided[Outcome::Allowed as usize], 3);
        assert_eq!(sealed.overflow, 3);
        assert_eq!(sealed.total().decided[Outcome::Allowed as usize], 6, "nothing dropped");
    }

    #[test]
    fn a_batch_is_json_with_non_zero_counts_only() {
        let mut t = Tally::new(10);
        t.decided(T0, Some(("web", Some("ac\"me"))), Outcome::Allowed);
        t.responded(T0, ("web", Some("ac\"me")), 503);
        t.decided(T0, Some(("cli", None)), Outcome::Unavailable);
        t.decided(T0, None, Outcome::DeniedMalformed);
        let mut seq = 0;
        let batches = t.seal().unwrap_or_default().batches("vm1", &mut seq, MAX_BATCH_BYTES);
        assert_eq!(seq, 1);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].id, "vm1-1");
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
        let mut t = Tally::new(200_000);
        for i in 0..100_000 {
            t.decided(T0, Some((&format!("key-{i:06}"), Some("owner-of-many"))), Outcome::Allowed);
        }
        t.decided(T0, None, Outcome::Public);
        let mut seq = 7;
        let batches = t.seal().unwrap_or_default().batches("vm", &mut seq, MAX_BATCH_BYTES);
        assert!(batches.len() > 10);
        let mut seen = 0u64;
        let mut ids = std::collections::HashSet::new();
        for b in &batches {
            assert!(b.body.len() <= MAX_BATCH_BYTES, "{} bytes", b.body.len());
            assert!(ids.insert(b.id.clone()));
            let doc: serde_json::Value = serde_json::from_str(&b.body).unwrap_or_default();
            for k in doc["keys"].as_array().into_iter().flatten() {
                seen += k["counts"]["allowed"].as_u64().unwrap_or(0);
            }
        }
        assert_eq!(seen, 100_000);
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
}
