//! Keys already looked up, so that a key sent again costs a short MAC instead of SHA-256.
//!
//! SHA-256 of the presented key is the largest part of keygate's own work per request
//! (about 4,000 of the 40,000 instructions a request spends in and around the VM, counted
//! with callgrind). Clients send the same key request after request, so the answer of
//! one lookup is kept: which key the table holds for it, or that it holds none.
//!
//! An entry holds no key and no digest, only a tag (`tag`), under a secret drawn for each
//! table. A lookup is answered from
//! the cache only when the presented key's tag equals the stored one, so reaching another
//! key's entry means forging a 128-bit MAC under a secret that never leaves the VM. Tags
//! are spread over a fixed number of slots; a new answer overwrites the slot's old one,
//! which costs the overwritten key one SHA-256 on its next request and nothing else.
//! Without a random source there is no cache, and every lookup hashes.

use crate::core::tag::TagKey;
use std::sync::Mutex;

/// Slots for the largest tables; smaller tables get a power of two near their size.
const MAX_SLOTS: usize = 4096;

/// What a slot remembers about the key whose tag it holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Answer {
    /// The table's key at this index.
    Key(u32),
    /// The table holds no key with this digest.
    Absent,
}

#[derive(Clone, Copy)]
struct Slot {
    tag: u128,
    answer: Answer,
}

/// The tag of an empty slot. A presented key's tag equals it with probability 2^-128,
/// and even then the slot only answers "absent", which a lookup would say too.
const EMPTY: Slot = Slot { tag: 0, answer: Answer::Absent };

/// The slots sit behind a mutex so that a policy stays `Sync` (the CLI and the fuzz targets
/// share one); in the VM there is one thread, and the lock is only tried, never waited on:
/// a slot that cannot be had is a miss.
pub struct Verified {
    secret: TagKey,
    mask: usize,
    slots: Mutex<Box<[Slot]>>,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verified({} slots)", self.mask + 1)
    }
}

impl Verified {
    /// A cache sized for a table of `keys` keys, with a fresh secret; `None` when the OS
    /// random source fails (then no lookup is ever cached).
    pub fn new(keys: usize) -> Option<Verified> {
        let secret = TagKey::random()?;
        let slots = keys.saturating_mul(2).clamp(16, MAX_SLOTS).next_power_of_two();
        Some(Verified { secret, mask: slots - 1, slots: Mutex::new(vec![EMPTY; slots].into()) })
    }

    /// The tag of a presented key, and the slot it belongs in.
    pub fn tag(&self, presented: &[u8]) -> Tag {
        let tag = self.secret.tag(presented);
        Tag { tag, slot: (tag as usize) & self.mask }
    }

    /// The answer remembered for this tag, if its slot still holds it.
    pub fn get(&self, tag: &Tag) -> Option<Answer> {
        let slots = self.slots.try_lock().ok()?;
        let slot = slots.get(tag.slot)?;
        (slot.tag == tag.tag && tag.tag != EMPTY.tag).then_some(slot.answer)
    }

    pub fn remember(&self, tag: &Tag, answer: Answer) {
        if let Ok(mut slots) = self.slots.try_lock() {
            if let Some(slot) = slots.get_mut(tag.slot) {
                *slot = Slot { tag: tag.tag, answer };
            }
        }
    }
}

/// A presented key's tag; computed once per lookup.
pub struct Tag {
    tag: u128,
    slot: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    type Checked = Result<(), &'static str>;

    #[test]
    fn remembers_answers_by_tag_only() -> Checked {
        let v = Verified::new(10).ok_or("no random source")?;
        let a = v.tag(b"key-a");
        // A second key in another slot: with a random secret, "key-b" may share key-a's.
        let other = (0..).map(|i| format!("key-b{i}")).find(|k| v.tag(k.as_bytes()).slot != a.slot);
        let other = other.ok_or("every key shares a slot")?;
        let b = v.tag(other.as_bytes());
        assert_eq!(v.get(&a), None);
        v.remember(&a, Answer::Key(3));
        v.remember(&b, Answer::Absent);
        assert_eq!(v.get(&v.tag(b"key-a")), Some(Answer::Key(3)));
        assert_eq!(v.get(&v.tag(other.as_bytes())), Some(Answer::Absent));
        assert_eq!(v.get(&v.tag(b"key-c")), None);
        Ok(())
    }

    #[test]
    fn a_slot_holds_the_latest_answer_only() -> Checked {
        let v = Verified::new(1).ok_or("no random source")?;
        // Find two keys that share a slot.
        let first = v.tag(b"k0");
        let other = (1..).map(|i| format!("k{i}")).find(|k| v.tag(k.as_bytes()).slot == first.slot);
        let other = other.ok_or("no key shares the slot")?;
        v.remember(&first, Answer::Key(0));
        v.remember(&v.tag(other.as_bytes()), Answer::Key(1));
        assert_eq!(v.get(&v.tag(b"k0")), None, "overwritten, so asked again");
        assert_eq!(v.get(&v.tag(other.as_bytes())), Some(Answer::Key(1)));
        Ok(())
    }

    #[test]
    fn sizes_follow_the_table_within_bounds() {
        assert_eq!(Verified::new(0).map(|v| v.mask + 1), Some(16));
        assert_eq!(Verified::new(100).map(|v| v.mask + 1), Some(256));
        assert_eq!(Verified::new(100_000).map(|v| v.mask + 1), Some(MAX_SLOTS));
    }
}
