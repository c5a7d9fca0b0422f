//! What one VM remembers of the key service's answers.
//!
//! Entries are found by a tag of the presented key, not by its digest: SipHash-2-4-128 under
//! a secret drawn for each cache (`tag`), so a cached remote key costs a short MAC
//! instead of SHA-256 on every request. Each entry also holds the digest, so the change feed
//! (which names digests) can drop it.
//!
//! Memory (about 240 bytes per cached key, most of it the compiled entry): slots are keyed
//! by the tag's lower 64 bits and keep its upper 64 to check, and the feed's index holds 64
//! bits of the digest's tag under the same secret, not all 32 bytes. Two cached keys sharing
//! either cannot answer for each other: the second is not cached, so a slot answers only its
//! own tag and the index always names every cached digest. (That second key's requests,
//! finding no answer after two lookups, get the documented 503 until the first leaves the
//! cache; the values are random, so at a million cached entries the chance of any such pair
//! is about 3 in 100 million.)
//!
//! Both maps hash by these values as they are, and both are keyed by the cache's secret:
//! a client chooses its key, and so the key's digest, but cannot choose where either lands,
//! so it cannot pile entries onto one probe chain.
//!
//! Bounds: `max_entries` positive answers and, apart from them, `max_negative` negative
//! ones, each evicted oldest answer first; so a flood of unknown keys only ever evicts other
//! unknown keys. A record in the order queue carries its slot's insertion number, so the
//! records a refreshed key leaves behind are dead and never evict its newer answer. Origins
//! work the same way, with [`MAX_ORIGINS`] answers that list keys and, apart from them,
//! [`MAX_EMPTY_ORIGINS`] that list none: a flood of made-up origins evicts only other
//! made-up origins. An expired positive entry stays (until evicted) so that it can serve
//! while the service fails, for `stale_if_error_ms`; an entry the feed names is removed at
//! once, so it can never serve stale.

use crate::core::entry::Entry;
use crate::core::keytable::Digest;
use crate::core::policy::CacheSettings;
use crate::core::tag::TagKey;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};

/// Most origins whose answers list keys that one VM keeps.
pub const MAX_ORIGINS: usize = 4096;
/// Most origins whose answers list no key that one VM keeps, apart from those.
pub const MAX_EMPTY_ORIGINS: usize = 4096;

/// What the cache says about a presented key.
#[derive(Debug)]
pub enum Cached<'c> {
    /// A positive answer within its TTL.
    Fresh(&'c Entry),
    /// The service said 404 within the negative TTL.
    Absent,
    /// Nothing usable: ask the service.
    Miss,
}

struct Slot {
    /// The tag's upper 64 bits; its lower 64 bits are the slot's key. Both must match.
    check: u64,
    /// The digest's key in `by_digest` (see [`RemoteCache::index_key`]).
    prefix: u64,
    /// When the answer stops being fresh (Unix ms).
    expires: i64,
    /// Its insertion number: only the order record carrying it may evict the slot.
    seq: u64,
    /// `None` for a negative answer.
    entry: Option<Box<Entry>>,
}

struct OriginSlot {
    entries: Vec<Entry>,
    expires: i64,
    /// Its insertion number: only the order record carrying it may evict the slot.
    seq: u64,
}

/// The answers of one kind (listing keys, or listing none) in insertion order, for eviction.
#[derive(Default)]
struct OriginOrder {
    records: VecDeque<(Box<[u8]>, u64)>,
    /// Live slots of this kind.
    count: usize,
}

pub struct RemoteCache {
    settings: CacheSettings,
    secret: TagKey,
    /// By the tag's lower 64 bits; a slot answers only a tag whose upper bits match too.
    slots: HashMap<u64, Slot, BuildHasherDefault<PassThrough>>,
    /// Digest index key → slot key, for the feed (see the module comment).
    by_digest: HashMap<u64, u64, BuildHasherDefault<PassThrough>>,
    /// Insertion order of positive and negative slots, for eviction: (slot key, seq). A
    /// record whose seq is not its slot's any more (refreshed or removed) is dead.
    positive_order: VecDeque<(u64, u64)>,
    negative_order: VecDeque<(u64, u64)>,
    /// The next insertion number.
    seq: u64,
    positive: usize,
    negative: usize,
    origins: HashMap<Box<[u8]>, OriginSlot>,
    /// `[listing keys, listing none]`.
    origin_order: [OriginOrder; 2],
}

impl RemoteCache {
    /// A cache with its own secret; `None` without an OS random source (then the filter
    /// cannot use the key service safely and refuses remote keys with 503s).
    pub fn new(settings: CacheSettings) -> Option<RemoteCache> {
        Some(RemoteCache {
            settings,
            secret: TagKey::random()?,
            slots: HashMap::default(),
            by_digest: HashMap::default(),
            positive_order: VecDeque::new(),
            negative_order: VecDeque::new(),
            seq: 0,
            positive: 0,
            negative: 0,
            origins: HashMap::new(),
            origin_order: Default::default(),
        })
    }

    /// A digest's key in the feed's index: 64 bits of its tag, so that clients, who choose
    /// their keys' digests, cannot choose where they land.
    fn index_key(&self, digest: &Digest) -> u64 {
        self.secret.tag(digest) as u64
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The tag of a presented key under this cache's secret.
    pub fn tag(&self, presented: &[u8]) -> u128 {
        self.secret.tag(presented)
    }

    pub fn get(&self, tag: u128, now_ms: i64) -> Cached<'_> {
        match self.slot(tag) {
            Some(slot) if now_ms < slot.expires => match &slot.entry {
                Some(entry) => Cached::Fresh(entry),
                None => Cached::Absent,
            },
            _ => Cached::Miss,
        }
    }

    /// An expired positive answer still within `stale_if_error_ms` of its expiry.
    pub fn stale(&self, tag: u128, now_ms: i64) -> Option<&Entry> {
        let slot = self.slot(tag)?;
        let limit = slot.expires.saturating_add(self.settings.stale_if_error_ms);
        (now_ms < limit).then_some(slot.entry.as_deref()).flatten()
    }

    /// Remembers the service's answer for a key: its entry, or `None` for a 404. Returns how
    /// many entries were evicted to make room.
    pub fn insert(&mut self, tag: u128, digest: Digest, entry: Option<Entry>, now_ms: i64) -> u32 {
        let (key, check) = split(tag);
        self.remove_tag(tag);
        let prefix = self.index_key(&digest);
        // Another key holds this slot, or another digest with the same index key is cached:
        // keep both maps exact by not caching this one (see the module comment).
        if self.slots.contains_key(&key) || self.by_digest.contains_key(&prefix) {
            return 0;
        }
        let positive = entry.is_some();
        let ttl = if positive { self.settings.ttl_ms } else { self.settings.negative_ttl_ms };
        let expires = now_ms.saturating_add(ttl);
        let seq = self.seq;
        self.seq += 1;
        self.slots.insert(key, Slot { check, prefix, expires, seq, entry: entry.map(Box::new) });
        self.by_digest.insert(prefix, key);
        let evicted = if positive {
            self.positive += 1;
            self.positive_order.push_back((key, seq));
            self.evict(true)
        } else {
            self.negative += 1;
            self.negative_order.push_back((key, seq));
            self.evict(false)
        };
        self.compact();
        evicted
    }

    /// Drops whatever is cached for a digest the feed named; whether anything was.
    pub fn invalidate(&mut self, digest: &Digest) -> bool {
        match self.by_digest.get(&self.index_key(digest)).copied() {
            Some(key) => self.remove_key(key),
            None => false,
        }
    }

    /// The fresh answer for an origin: the CORS entries that list it or `"*"`.
    pub fn origin(&self, origin: &[u8], now_ms: i64) -> Option<&[Entry]> {
        let slot = self.origins.get(origin)?;
        (now_ms < slot.expires).then_some(slot.entries.as_slice())
    }

    /// Remembers the service's answer for an origin; returns how many answers were evicted to
    /// make room.
    pub fn insert_origin(&mut self, origin: &[u8], entries: Vec<Entry>, now_ms: i64) -> u32 {
        self.remove_origin(origin);
        let empty = entries.is_empty();
        let ttl = if empty { self.settings.negative_ttl_ms } else { self.settings.ttl_ms };
        let seq = self.seq;
        self.seq += 1;
        let slot = OriginSlot { entries, expires: now_ms.saturating_add(ttl), seq };
        self.origins.insert(origin.into(), slot);
        let bound = if empty { MAX_EMPTY_ORIGINS } else { MAX_ORIGINS };
        let kind = usize::from(empty);
        let order = &mut self.origin_order[kind];
        order.records.push_back((origin.into(), seq));
        order.count += 1;
        let mut evicted = 0;
        while self.origin_order[kind].count > bound {
            let Some((oldest, seq)) = self.origin_order[kind].records.pop_front() else { break };
            if self.origins.get(&oldest).is_some_and(|s| s.seq == seq) {
                evicted += u32::from(self.remove_origin(&oldest));
            }
        }
        let (origins, order) = (&self.origins, &mut self.origin_order[kind]);
        if order.records.len() > 2 * order.count + 64 {
            order.records.retain(|(o, seq)| origins.get(o).is_some_and(|s| s.seq == *seq));
        }
        evicted
    }

    /// Drops an origin's answer (`None`: every origin's, for a `"*"` key).
    pub fn invalidate_origin(&mut self, origin: Option<&[u8]>) -> bool {
        match origin {
            Some(o) => self.remove_origin(o),
            None => {
                let any = !self.origins.is_empty();
                self.origins.clear();
                self.origin_order = Default::default();
                any
            }
        }
    }

    fn remove_origin(&mut self, origin: &[u8]) -> bool {
        let Some(slot) = self.origins.remove(origin) else { return false };
        let order = &mut self.origin_order[usize::from(slot.entries.is_empty())];
        order.count -= 1;
        true
    }

    /// Records in the origins' order queues, live or dead.
    #[cfg(test)]
    fn origin_records(&self) -> usize {
        self.origin_order.iter().map(|o| o.records.len()).sum()
    }

    /// Forgets everything (the feed's `reset`).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.by_digest.clear();
        self.positive_order.clear();
        self.negative_order.clear();
        self.positive = 0;
        self.negative = 0;
        self.origins.clear();
        self.origin_order = Default::default();
    }

    /// Keys and origins held.
    pub fn len(&self) -> usize {
        self.slots.len() + self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, tag: u128) -> Option<&Slot> {
        let (key, check) = split(tag);
        self.slots.get(&key).filter(|s| s.check == check)
    }

    /// Removes the slot of exactly this tag, if any.
    fn remove_tag(&mut self, tag: u128) -> bool {
        let (key, check) = split(tag);
        self.slots.get(&key).is_some_and(|s| s.check == check) && self.remove_key(key)
    }

    fn remove_key(&mut self, key: u64) -> bool {
        let Some(slot) = self.slots.remove(&key) else { return false };
        if self.by_digest.get(&slot.prefix) == Some(&key) {
            self.by_digest.remove(&slot.prefix);
        }
        if slot.entry.is_some() {
            self.positive -= 1;
        } else {
            self.negative -= 1;
        }
        true
    }

    /// Evicts the oldest slots of one kind until it fits its bound.
    fn evict(&mut self, positive: bool) -> u32 {
        let bound =
            if positive { self.settings.max_entries } else { self.settings.max_negative } as usize;
        let mut evicted = 0;
        loop {
            let count = if positive { self.positive } else { self.negative };
            if count <= bound {
                return evicted;
            }
            let order = if positive { &mut self.positive_order } else { &mut self.negative_order };
            let Some((key, seq)) = order.pop_front() else { return evicted };
            if live(&self.slots, key, seq) {
                self.remove_key(key);
                evicted += 1;
            }
        }
    }

    /// Order queues keep dead records until they reach the front; when they outgrow what
    /// they track, dead records are dropped so memory stays bounded.
    fn compact(&mut self) {
        let slots = &self.slots;
        for (order, count) in
            [(&mut self.positive_order, self.positive), (&mut self.negative_order, self.negative)]
        {
            if order.len() > 2 * count + 64 {
                order.retain(|&(key, seq)| live(slots, key, seq));
            }
        }
    }
}

/// Whether an order record is its slot's latest (a slot is in one queue only, by its kind).
fn live(slots: &HashMap<u64, Slot, BuildHasherDefault<PassThrough>>, key: u64, seq: u64) -> bool {
    slots.get(&key).is_some_and(|s| s.seq == seq)
}

/// A tag as the slot map's key (lower 64 bits) and the check its slot keeps (upper 64).
fn split(tag: u128) -> (u64, u64) {
    (tag as u64, (tag >> 64) as u64)
}

/// Tags are uniformly random and unknown to clients: they are their own hash.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keytable::sha256;
    use crate::core::parse;

    fn settings(max_entries: u32, max_negative: u32) -> CacheSettings {
        CacheSettings {
            max_entries,
            max_negative,
            ttl_ms: 1000,
            negative_ttl_ms: 100,
            stale_if_error_ms: 500,
        }
    }

    fn cache(max_entries: u32, max_negative: u32) -> RemoteCache {
        match RemoteCache::new(settings(max_entries, max_negative)) {
            Some(c) => c,
            None => unreachable!("no random source"),
        }
    }

    fn entry(id: &str) -> Entry {
        match parse::entry(format!(r#"{{"id": "{id}"}}"#).as_bytes(), "key") {
            Ok(e) => e,
            Err(e) => unreachable!("{e}"),
        }
    }

    fn id(c: &Cached) -> Option<String> {
        match c {
            Cached::Fresh(e) => Some(e.key.id.to_string()),
            _ => None,
        }
    }

    #[test]
    fn answers_are_fresh_for_their_ttl_then_stale_for_errors_only() {
        let mut c = cache(10, 10);
        let tag = c.tag(b"k1");
        assert!(matches!(c.get(tag, 0), Cached::Miss));
        c.insert(tag, sha256(b"k1"), Some(entry("one")), 0);
        assert_eq!(id(&c.get(tag, 999)).as_deref(), Some("one"));
        assert!(matches!(c.get(tag, 1000), Cached::Miss), "expired");
        assert!(c.stale(tag, 1499).is_some());
        assert!(c.stale(tag, 1500).is_none(), "past stale_if_error");
        let neg = c.tag(b"k2");
        c.insert(neg, sha256(b"k2"), None, 0);
        assert!(matches!(c.get(neg, 99), Cached::Absent));
        assert!(matches!(c.get(neg, 100), Cached::Miss));
        assert!(c.stale(neg, 100).is_none(), "a 404 never serves stale");
    }

    #[test]
    fn the_feed_drops_positive_and_negative_answers_and_nothing_stale_survives() {
        let mut c = cache(10, 10);
        let (a, b) = (c.tag(b"a"), c.tag(b"b"));
        c.insert(a, sha256(b"a"), Some(entry("a")), 0);
        c.insert(b, sha256(b"b"), None, 0);
        assert!(c.invalidate(&sha256(b"a")));
        assert!(c.invalidate(&sha256(b"b")));
        assert!(!c.invalidate(&sha256(b"b")));
        assert!(matches!(c.get(a, 1), Cached::Miss) && matches!(c.get(b, 1), Cached::Miss));
        assert!(c.stale(a, 1).is_none(), "an invalidated key never serves stale");
        assert!(c.is_empty());
    }

    #[test]
    fn unknown_keys_never_evict_known_ones() {
        let mut c = cache(4, 8);
        let tags: Vec<u128> = (0..4).map(|i| c.tag(format!("good{i}").as_bytes())).collect();
        for (i, t) in tags.iter().enumerate() {
            c.insert(*t, sha256(format!("good{i}").as_bytes()), Some(entry("g")), 0);
        }
        let mut evicted = 0;
        for i in 0..10_000 {
            let k = format!("random{i}");
            evicted += c.insert(c.tag(k.as_bytes()), sha256(k.as_bytes()), None, 0);
        }
        assert_eq!(evicted, 10_000 - 8);
        assert!(tags.iter().all(|t| matches!(c.get(*t, 1), Cached::Fresh(_))));
        assert_eq!(c.len(), 12);
        assert!(c.negative_order.len() <= 2 * 8 + 64, "order queue bounded");
    }

    #[test]
    fn positive_answers_are_bounded_oldest_first() {
        let mut c = cache(3, 3);
        let tags: Vec<u128> = (0..5).map(|i| c.tag(&[i])).collect();
        let mut evicted = 0;
        for (i, t) in tags.iter().enumerate() {
            evicted += c.insert(*t, sha256(&[i as u8]), Some(entry("e")), 0);
        }
        assert_eq!(evicted, 2);
        assert!(
            matches!(c.get(tags[0], 1), Cached::Miss) && matches!(c.get(tags[1], 1), Cached::Miss)
        );
        assert!(matches!(c.get(tags[4], 1), Cached::Fresh(_)));
        // Answering the same key again replaces its slot instead of adding one.
        c.insert(tags[4], sha256(&[4]), None, 0);
        assert_eq!(c.len(), 3);
        assert!(matches!(c.get(tags[4], 1), Cached::Absent));
    }

    #[test]
    fn only_a_slots_newest_record_evicts_it() {
        // A refreshed key leaves its older records in the order queue; one reaching the front
        // used to evict the key's newer slot, even the one just inserted. Under load that left
        // a valid key, after two lookups that both succeeded, with the 503 of a third it may
        // not ask, and during an outage with no stale answer to serve.
        let mut c = cache(2, 2);
        let [a, b, d] = [c.tag(b"a"), c.tag(b"b"), c.tag(b"d")];
        let ins = |c: &mut RemoteCache, t, k: &[u8]| c.insert(t, sha256(k), Some(entry("e")), 0);
        ins(&mut c, a, b"a");
        ins(&mut c, a, b"a"); // refreshed: records a, a
        ins(&mut c, b, b"b"); // a, a, b
        assert_eq!(ins(&mut c, d, b"d"), 1, "a is the oldest live slot");
        assert!(matches!(c.get(a, 1), Cached::Miss));
        assert_eq!(ins(&mut c, a, b"a"), 1, "a's old records are dead: b, the oldest, goes");
        assert!(matches!(c.get(a, 1), Cached::Fresh(_)), "a just answered stays");
        assert!(matches!(c.get(b, 1), Cached::Miss));
        ins(&mut c, d, b"d"); // refreshed: d is now newer than a
        assert_eq!(ins(&mut c, b, b"b"), 1);
        assert!(matches!(c.get(a, 1), Cached::Miss), "a's slot was the oldest");
        assert!(matches!(c.get(d, 1), Cached::Fresh(_)) && matches!(c.get(b, 1), Cached::Fresh(_)));
    }

    #[test]
    fn origins_expire_are_dropped_by_the_feed_and_bounded() {
        let mut c = cache(3, 3);
        c.insert_origin(b"https://a.example", vec![], 0);
        assert_eq!(c.origin(b"https://a.example", 99).map(<[Entry]>::len), Some(0));
        assert!(
            c.origin(b"https://a.example", 100).is_none(),
            "empty answers live the negative TTL"
        );
        c.insert_origin(b"https://b.example", vec![entry("b")], 0);
        assert!(c.invalidate_origin(Some(b"https://b.example")));
        assert!(c.origin(b"https://b.example", 1).is_none());
        for i in 0..MAX_ORIGINS + 5 {
            c.insert_origin(format!("https://{i}.example").as_bytes(), vec![entry("k")], 0);
        }
        assert!(c.origins.len() <= MAX_ORIGINS + 1);
        assert!(c.invalidate_origin(None));
        assert!(c.origins.is_empty());
    }

    #[test]
    fn a_flood_of_made_up_origins_never_evicts_a_real_ones_answer() {
        let mut c = cache(3, 3);
        c.insert_origin(b"https://app.example", vec![entry("web")], 0);
        for i in 0..3 * MAX_EMPTY_ORIGINS {
            let evicted = c.insert_origin(format!("https://{i}.evil").as_bytes(), vec![], 0);
            assert!(evicted <= 1);
        }
        assert_eq!(c.origin(b"https://app.example", 1).map(<[Entry]>::len), Some(1));
        assert_eq!(c.origins.len(), MAX_EMPTY_ORIGINS + 1);
    }

    #[test]
    fn an_origin_refreshed_many_times_keeps_its_memory_flat_and_its_latest_answer() {
        let mut c = cache(3, 3);
        for round in 0..10_000 {
            c.insert_origin(b"https://app.example", vec![entry("web")], round);
            if round % 2 == 0 {
                c.invalidate_origin(Some(b"https://app.example"));
            }
        }
        assert!(c.origin_records() <= 2 + 64, "{} order records", c.origin_records());
        // Its older records are dead: filling the bound evicts other origins, never it.
        for i in 0..MAX_ORIGINS - 1 {
            c.insert_origin(format!("https://{i}.example").as_bytes(), vec![entry("k")], 10_000);
        }
        assert!(c.origin(b"https://app.example", 10_000).is_some());
    }

    #[test]
    fn digests_sharing_their_first_bytes_are_both_cached_and_revoked_exactly() {
        // The feed's index is keyed by the cache's secret, over the whole digest: digests a
        // client made alike land apart.
        let mut c = cache(10, 10);
        let (a, b) = (c.tag(b"a"), c.tag(b"b"));
        let mut twin = [7u8; 32];
        twin[31] = 8;
        c.insert(a, [7u8; 32], Some(entry("a")), 0);
        c.insert(b, twin, Some(entry("b")), 0);
        assert!(matches!(c.get(a, 1), Cached::Fresh(_)) && matches!(c.get(b, 1), Cached::Fresh(_)));
        assert!(c.invalidate(&[7u8; 32]));
        assert!(matches!(c.get(a, 1), Cached::Miss));
        assert!(matches!(c.get(b, 1), Cached::Fresh(_)));
        assert!(c.invalidate(&twin));
        assert!(matches!(c.get(b, 1), Cached::Miss));
    }

    #[test]
    fn digests_made_to_collide_cost_no_more_than_random_ones() {
        // Digests whose first 8 bytes are equal but for their top bits: with the index keyed
        // by those bytes, every one of them would land on one probe chain (insert, evict and
        // invalidate each walking it). Timed beside random digests, the same number of each:
        // a pile-up is quadratic and far beyond the factor allowed here.
        const N: u32 = 20_000;
        let crafted = |i: u32| -> Digest {
            let mut d = [0u8; 32];
            d[4..8].copy_from_slice(&i.to_le_bytes());
            d
        };
        let random = |i: u32| sha256(&i.to_le_bytes());
        let run = |digest: &dyn Fn(u32) -> Digest| {
            let mut c = cache(10, N);
            let started = std::time::Instant::now();
            for i in 0..N {
                c.insert(c.tag(&i.to_le_bytes()), digest(i), None, 0);
            }
            for i in 0..N {
                c.invalidate(&digest(i));
            }
            started.elapsed()
        };
        let (flood, plain) = (run(&crafted), run(&random));
        assert!(flood < plain * 4 + std::time::Duration::from_millis(20), "{flood:?} vs {plain:?}");
    }

    #[test]
    fn a_tag_sharing_a_slot_key_with_another_is_never_answered_by_it() {
        let mut c = cache(10, 10);
        let a: u128 = (1 << 64) | 5;
        let b: u128 = (2 << 64) | 5;
        c.insert(a, sha256(b"a"), Some(entry("a")), 0);
        assert!(matches!(c.get(b, 1), Cached::Miss), "same lower bits, other key");
        assert!(c.stale(b, 2000).is_none());
        assert_eq!(c.insert(b, sha256(b"b"), Some(entry("b")), 0), 0);
        assert_eq!(id(&c.get(a, 1)).as_deref(), Some("a"), "the first keeps its slot");
        assert!(matches!(c.get(b, 1), Cached::Miss), "the second is not cached");
        assert!(!c.invalidate(&sha256(b"b")));
        assert!(c.invalidate(&sha256(b"a")));
    }

    #[test]
    fn tags_differ_between_caches_and_keys() {
        let (c1, c2) = (cache(1, 1), cache(1, 1));
        assert_ne!(c1.tag(b"k"), c2.tag(b"k"));
        assert_ne!(c1.tag(b"k"), c1.tag(b"k "));
        assert_eq!(c1.tag(b"k"), c1.tag(b"k"));
    }
}
