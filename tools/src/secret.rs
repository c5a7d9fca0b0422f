//! New secrets: the one place keygate makes a key, for `keygate key new` and the key
//! service alike. The format is `core::keyformat`'s: `kg_`, 43 base62 characters carrying
//! 256 bits from the OS random source, then six base62 characters of CRC32 over the rest,
//! which secret scanners and the filter (`key_format`) check.

use keygate::core::keyformat::{ALPHABET, BODY_LEN, CHECK_LEN};

/// What every key keygate makes starts with.
pub const PREFIX: &str = "kg_";

/// A new key: `kg_` + 43 base62 characters (log2(62) x 43 = 256.03 bits) + checksum.
/// `prefix` and 16 random hex characters (64 bits from the OS random source): an id, such as
/// a generated key id or a webhook event id, unique without coordination.
pub fn random_id(prefix: &str) -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("OS random source: {e}"))?;
    Ok(format!("{prefix}{}", keygate::core::hex::encode(&bytes)))
}

pub fn new_secret() -> Result<String, String> {
    let mut key = String::with_capacity(PREFIX.len() + BODY_LEN + CHECK_LEN);
    key.push_str(PREFIX);
    let mut pool = [0u8; 64];
    while key.len() < PREFIX.len() + BODY_LEN {
        getrandom::fill(&mut pool).map_err(|e| format!("OS random source: {e}"))?;
        // 248 = 4 x 62: bytes at or above it are dropped, so every character is uniform.
        for &b in pool.iter().filter(|&&b| b < 248) {
            if key.len() == PREFIX.len() + BODY_LEN {
                break;
            }
            key.push(ALPHABET[usize::from(b % 62)] as char);
        }
    }
    let check = base62::encode(crc32fast::hash(key.as_bytes()));
    key.push_str(&format!("{check:0>CHECK_LEN$}"));
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::core::keyformat::{checksum, is_checksummed, LEN};

    #[test]
    fn a_secret_is_prefix_body_and_the_checksum_the_filter_computes() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let key = new_secret().unwrap_or_default();
            assert_eq!(key.len(), LEN, "{key}");
            assert!(is_checksummed(key.as_bytes()), "{key}");
            let (signed, check) = key.split_at(LEN - CHECK_LEN);
            assert_eq!(check.as_bytes(), checksum(signed.as_bytes()));
            assert!(seen.insert(key));
        }
    }
}
