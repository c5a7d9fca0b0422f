//! A key entry as the key service's admin API receives it (after `name` is taken out) is
//! compiled or refused with a path and a reason; never a panic. A key pasted as a field name
//! is never echoed in the path or the reason (what this target found first; see
//! parse::looks_like_a_field), and values are never quoted back (parse::without_values).
#![no_main]
use keygate::core::parse::entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match entry(data, "") {
        Ok(e) => assert!((1..=64).contains(&e.key.id.len())),
        Err(e) => {
            assert!(!e.path.is_empty() && !e.reason.is_empty());
            assert!(!e.path.contains("kg_"), "path {} names a pasted key", e.path);
            assert!(!e.reason.starts_with("unknown field `kg_"), "{}", e.reason);
            assert!(!e.reason.starts_with("invalid type: string \""), "{}", e.reason);
        }
    }
});
