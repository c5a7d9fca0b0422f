//! keygate's key format, `kg_` + 43 base62 characters + 6 base62 characters of CRC32 over
//! the 46 before them: what secret scanners recognise, and what the filter can refuse before
//! any lookup (`key_format`) when the checksum is wrong.
//!
//! The CRC32 is IEEE's (as zlib's `crc32`), written big-endian in base62 (`0-9A-Za-z`) on six
//! characters, zero-padded. It is a typo and leak-scanner check, not a secret: anyone can
//! compute it, so a valid checksum says nothing about whether the key exists.

/// `kg_`.
pub const PREFIX: &[u8] = b"kg_";
/// Characters after the prefix that carry the key's randomness.
pub const BODY_LEN: usize = 43;
/// Base62 characters of the checksum.
pub const CHECK_LEN: usize = 6;
/// The whole key.
pub const LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Which presented keys the filter refuses before looking them up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// Every key is looked up.
    #[default]
    Any,
    /// A key that starts with `kg_` must carry a valid checksum; other keys are looked up.
    Checksummed,
    /// Every key must be a valid checksummed key.
    ChecksummedOnly,
}

impl KeyFormat {
    /// Whether `key` is refused without a lookup.
    pub fn refuses(self, key: &[u8]) -> bool {
        match self {
            KeyFormat::Any => false,
            KeyFormat::Checksummed => key.starts_with(PREFIX) && !is_checksummed(key),
            KeyFormat::ChecksummedOnly => !is_checksummed(key),
        }
    }
}

/// A `kg_` key of the right length, base62 throughout, whose last six characters are the
/// checksum of the rest.
pub fn is_checksummed(key: &[u8]) -> bool {
    if key.len() != LEN || !key.starts_with(PREFIX) {
        return false;
    }
    let (signed, check) = key.split_at(LEN - CHECK_LEN);
    if !signed[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    check == checksum(signed)
}

/// The six checksum characters for `signed` (the prefix and the body).
pub fn checksum(signed: &[u8]) -> [u8; CHECK_LEN] {
    let mut n = crc32(signed);
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// CRC-32/ISO-HDLC (zlib's), bit by bit over a table built at compile time.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[test]
    fn checksums_are_six_base62_characters_zero_padded() {
        // 0xCBF43926, in base62 (Python: the digits of 3421780262 by 62).
        assert_eq!(&checksum(b"123456789"), b"3jZRME");
        assert_eq!(&checksum(b""), b"000000");
    }
}
