//! Any input either compiles or is refused with a JSON path and a reason; never a panic.
#![no_main]
use keygate::core::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = Policy::from_json(data) {
        assert!(!e.path.is_empty() && !e.reason.is_empty());
    }
});
