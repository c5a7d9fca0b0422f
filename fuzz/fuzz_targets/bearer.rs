//! An accepted header is exactly `Bearer` (any case), one space, a 1-1024 byte b64token. Its
//! key, checked against keygate's format: `checksummed` refuses only `kg_` keys, and only
//! those that are not checksummed; a checksummed key is 52 base62-and-`_` bytes whose
//! checksum is the one the core computes.
#![no_main]
use keygate::core::keyformat::{checksum, is_checksummed, KeyFormat, LEN, PREFIX};
use keygate::core::token::{bearer_key, MAX_KEY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(key) = bearer_key(data) {
        assert!(data[..6].eq_ignore_ascii_case(b"bearer") && data[6] == b' ');
        assert_eq!(&data[7..], key);
        assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
        let body =
            key.iter().take_while(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(c)).count();
        assert!(body > 0 && key[body..].iter().all(|&c| c == b'='));
        format(key);
    }
    format(data);
});

fn format(key: &[u8]) {
    let good = is_checksummed(key);
    if good {
        assert!(key.len() == LEN && key.starts_with(PREFIX));
        assert_eq!(key[LEN - 6..], checksum(&key[..LEN - 6]));
    }
    assert!(!KeyFormat::Any.refuses(key));
    assert_eq!(KeyFormat::Checksummed.refuses(key), key.starts_with(PREFIX) && !good);
    assert_eq!(KeyFormat::ChecksummedOnly.refuses(key), !good);
}
