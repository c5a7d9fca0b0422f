//! A usage batch as the key service takes it (`POST /v1/filter/usage`, `serve::usage`).
//! Never a panic. A batch taken has a valid id and minute, keys listed once each, and only
//! counts the filter can send (known results, positive, bounded); a refusal names a path.
#![no_main]
use keygate_tools::serve::usage::{parse_batch, OTHER, UNKEYED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_batch(data) {
        Ok(batch) => {
            assert!(!batch.id.is_empty() && batch.id.len() <= 128);
            assert!(batch.minute >= 0 && batch.minute % 60_000 == 0);
            let mut seen = std::collections::HashSet::new();
            for id in &batch.used {
                assert!(seen.insert(id.as_str()), "{id} twice");
            }
            for (key, _, result, count) in &batch.rows {
                assert!(*count > 0 && *count <= 1_000_000_000_000);
                assert!(!result.is_empty());
                assert!(key == OTHER || key == UNKEYED || batch.used.contains(key));
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
});
