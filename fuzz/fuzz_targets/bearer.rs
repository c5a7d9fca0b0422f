//! An accepted header is exactly `Bearer` (any case), one space, a 1-1024 byte b64token.
#![no_main]
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
    }
});
