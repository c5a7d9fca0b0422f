//! The compiled key table: SHA-256 digest → key.
//!
//! Keys are looked up by the digest of the presented key, never compared in clear. The
//! digest is already uniformly random, so its first eight bytes are the hash: no second
//! hash per request, and nothing an attacker controls decides which bucket is probed
//! (finding a key whose digest lands near a configured one means breaking SHA-256).

use crate::core::cors::Origins;
use crate::core::rules::Resources;
use crate::core::verified::{Answer, Verified};
use crate::core::window::Window;
use hashbrown::hash_map::Entry;
use hashbrown::HashMap;
use sha2::{Digest as _, Sha256};
use std::hash::{BuildHasherDefault, Hash, Hasher};

pub type Digest = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Which endpoints a key may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    All,
    /// Index into the policy's rule sets.
    Rules(u32),
    /// Rules carried by the entry itself: a key from the key service (see `remote`).
    Own,
}

#[derive(Debug)]
pub struct Key {
    pub id: Box<str>,
    pub owner: Option<Box<str>>,
    pub window: Window,
    pub disabled: bool,
    /// `Some` for a CORS-enabled key: the origins it may be used from. Boxed, like
    /// `resources`, because most keys have neither and 100,000 keys should stay small.
    pub origins: Option<Box<Origins>>,
    pub endpoints: Endpoints,
    pub resources: Option<Box<Resources>>,
    /// The forwarded limits header's value (see `limits`); `None` for an unlimited key.
    pub limits: Option<Box<str>>,
}

#[derive(Default)]
pub struct KeyTable {
    by_digest: HashMap<DigestKey, u32, BuildHasherDefault<DigestHasher>>,
    keys: Vec<Key>,
    /// Answers of earlier lookups (see `verified`), once the table is complete.
    verified: Option<Verified>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyTable({} keys)", self.keys.len())
    }
}

impl KeyTable {
    pub fn with_capacity(n: usize) -> KeyTable {
        KeyTable {
            by_digest: HashMap::with_capacity_and_hasher(n, Default::default()),
            keys: Vec::with_capacity(n),
            verified: None,
        }
    }

    /// Adds a key; on a digest already present, returns the index of the key holding it.
    pub fn insert(&mut self, digest: Digest, key: Key) -> Result<(), usize> {
        match self.by_digest.entry(DigestKey(digest)) {
            Entry::Occupied(held) => Err(*held.get() as usize),
            Entry::Vacant(slot) => {
                slot.insert(self.keys.len() as u32);
                self.keys.push(key);
                Ok(())
            }
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<&Key> {
        self.keys.get(self.index(digest)? as usize)
    }

    fn index(&self, digest: &Digest) -> Option<u32> {
        self.by_digest.get(&DigestKey(*digest)).copied()
    }

    /// The key the table holds for a presented key: by its SHA-256, or by the answer an
    /// earlier lookup of the same key left in the cache.
    pub fn lookup(&self, presented: &[u8]) -> Option<&Key> {
        let Some(cache) = &self.verified else {
            return self.get(&sha256(presented));
        };
        let tag = cache.tag(presented);
        let index = match cache.get(&tag) {
            Some(Answer::Key(i)) => Some(i),
            Some(Answer::Absent) => None,
            None => {
                let found = self.index(&sha256(presented));
                cache.remember(&tag, found.map_or(Answer::Absent, Answer::Key));
                found
            }
        };
        self.keys.get(index? as usize)
    }

    /// The complete table, with its lookup cache (none if the OS has no random source).
    pub fn with_lookup_cache(mut self) -> KeyTable {
        self.verified = Verified::new(self.keys.len());
        self
    }

    /// The first key (in table order) whose id an earlier key already has, as
    /// `(earlier, later)` indices. Sorting indices costs less memory than a set of ids.
    pub fn first_duplicate_id(&self) -> Option<(usize, usize)> {
        let mut order: Vec<u32> = (0..self.keys.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            self.keys[a as usize].id.cmp(&self.keys[b as usize].id).then(a.cmp(&b))
        });
        order
            .windows(2)
            .filter(|w| self.keys[w[0] as usize].id == self.keys[w[1] as usize].id)
            .map(|w| (w[0] as usize, w[1] as usize))
            .min_by_key(|&(_, later)| later)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A digest as a hash-map key: it hashes as its first eight bytes (see the module comment).
#[derive(PartialEq, Eq)]
struct DigestKey(Digest);

impl Hash for DigestKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

/// Passes the `u64` written by [`DigestKey`] through unchanged.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `DigestKey` is hashed; stay correct anyway.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        Key {
            id: id.into(),
            owner: None,
            window: Window::default(),
            disabled: false,
            origins: None,
            endpoints: Endpoints::All,
            resources: None,
            limits: None,
        }
    }

    #[test]
    fn lookups_give_the_same_answer_with_and_without_the_cache() {
        let mut t = KeyTable::default();
        for i in 0..50 {
            assert_eq!(
                t.insert(sha256(format!("key-{i}").as_bytes()), key(&format!("id-{i}"))),
                Ok(())
            );
        }
        let t = t.with_lookup_cache();
        assert!(t.verified.is_some());
        // Twice each: the second round is answered from the cache.
        for _ in 0..2 {
            for i in 0..60 {
                let presented = format!("key-{i}");
                let expected = t.get(&sha256(presented.as_bytes())).map(|k| &*k.id);
                assert_eq!(t.lookup(presented.as_bytes()).map(|k| &*k.id), expected, "{presented}");
                assert_eq!(expected.is_some(), i < 50);
            }
        }
        assert!(t.lookup(b"key-1 ").is_none() && t.lookup(b"").is_none());
    }

    #[test]
    fn looks_up_by_digest_and_refuses_duplicates() {
        let mut t = KeyTable::with_capacity(2);
        assert_eq!(t.insert(sha256(b"one"), key("a")), Ok(()));
        assert_eq!(t.insert(sha256(b"two"), key("b")), Ok(()));
        assert_eq!(t.insert(sha256(b"one"), key("c")), Err(0));
        assert_eq!(t.get(&sha256(b"two")).map(|k| &*k.id), Some("b"));
        assert!(t.get(&sha256(b"three")).is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn digest_of_known_value() {
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
