//! Any key-service answer is parsed or refused; never a panic. What is accepted holds
//! what the filter relies on: valid ids, cursors it can send back, digests of 32 bytes.
#![no_main]
use keygate::core::remote::protocol::{parse_changes, parse_key, parse_origin, MAX_CURSOR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Only an answer naming the digest asked for is taken.
    if let Ok(entry) = parse_key(data, &[0xab; 32]) {
        assert!(!entry.key.id.is_empty() && entry.key.id.len() <= 64);
        assert!(parse_key(data, &[0xcd; 32]).is_err());
    }
    if let Ok(entries) = parse_origin(data, b"https://a.example") {
        assert!(entries.iter().all(|e| e
            .key
            .origins
            .as_ref()
            .is_some_and(|o| o.allows(b"https://a.example"))));
    }
    if let Ok(changes) = parse_changes(data) {
        assert!(!changes.cursor.is_empty() && changes.cursor.len() <= MAX_CURSOR);
        assert!(changes.cursor.bytes().all(|c| c.is_ascii_graphic()));
    }
});
