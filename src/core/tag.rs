//! Keyed tags: SipHash-2-4 with 128-bit output under a secret drawn from the OS random
//! source, one secret per table or cache.
//!
//! The lookup caches find a presented key by its tag instead of its SHA-256: a tag is a
//! short MAC, and reaching another key's entry means forging one under a secret that never
//! leaves the VM. Without a random source there is no secret, and no cache.

use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

pub struct TagKey {
    k0: u64,
    k1: u64,
}

impl TagKey {
    /// A fresh secret; `None` when the OS random source fails.
    pub fn random() -> Option<TagKey> {
        let mut seed = [0u8; 16];
        getrandom::fill(&mut seed).ok()?;
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = seed;
        Some(TagKey {
            k0: u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            k1: u64::from_le_bytes([i, j, k, l, m, n, o, p]),
        })
    }

    /// The tag of `bytes` under this secret.
    pub fn tag(&self, bytes: &[u8]) -> u128 {
        let mut mac = SipHasher24::new_with_keys(self.k0, self.k1);
        mac.write(bytes);
        mac.finish128().as_u128()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_secret_tags_differently_and_each_tag_repeats() -> Result<(), &'static str> {
        let (a, b) = (TagKey::random().ok_or("no random")?, TagKey::random().ok_or("no random")?);
        assert_eq!(a.tag(b"same key"), a.tag(b"same key"));
        assert_ne!(a.tag(b"same key"), b.tag(b"same key"));
        assert_ne!(a.tag(b"same key"), a.tag(b"same kez"));
        Ok(())
    }
}
