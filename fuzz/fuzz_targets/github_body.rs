//! A GitHub secret scanning report as `POST /v1/leaks/github` takes it: the signature headers
//! and the body. Never a panic. Arbitrary bytes never verify against a fixed key set (the
//! first two input bytes choose how long the identifier and signature headers are). Reports
//! that parse keep the bounds, each with a non-empty token; a refusal is one of the fixed
//! forms (an index, a field name and a reason), so it never carries a token.
#![no_main]
use keygate_tools::serve::github::{parse_reports, PublicKeys, MAX_FIELD, MAX_REPORTS};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

// One real P-256 public key (of the throwaway private scalar 12345), as GitHub lists keys.
const KEYS: &str = r#"{"public_keys": [{"key_identifier": "fuzz", "is_current": true, "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEJu/OvQ7p40pmkYfhizqRIrL3M5Rb\nZJzJ+fkh6fna2BKQI4venMe7Mw0VDGdwTdJa5wVSBXRLbzG/QHB0WHLQ5g==\n-----END PUBLIC KEY-----\n"}]}"#;

fn keys() -> Option<&'static PublicKeys> {
    static KEYS_: OnceLock<Option<PublicKeys>> = OnceLock::new();
    KEYS_.get_or_init(|| PublicKeys::parse(KEYS).ok()).as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Some((&[a, b], rest)) = data.split_first_chunk::<2>() {
        let (a, b) = (usize::from(a).min(rest.len()), usize::from(b));
        let (identifier, rest) = rest.split_at(a);
        let (signature, body) = rest.split_at(b.min(rest.len()));
        let keys = keys();
        assert!(keys.is_some(), "the fixed key set must parse");
        if let Some(keys) = keys {
            assert!(keys.verify(Some(identifier), Some(signature), body).is_err());
        }
    }
    match parse_reports(data) {
        Ok(reports) => {
            assert!(reports.len() <= MAX_REPORTS);
            for r in &reports {
                assert!(!r.token.is_empty() && r.token.len() <= MAX_FIELD);
                assert!(r.kind.len() <= MAX_FIELD && r.url.len() <= MAX_FIELD);
                assert!(r.source.len() <= MAX_FIELD);
            }
        }
        // Every refusal is one of the fixed forms, so it can carry no token.
        Err(why) => assert!(fixed_form(&why), "{why}"),
    }
});

fn fixed_form(why: &str) -> bool {
    if why == "expected a JSON array of reports" {
        return true;
    }
    if let Some(count) = why.strip_suffix(" reports: at most 1000 a call") {
        return count.bytes().all(|c| c.is_ascii_digit());
    }
    let Some((index, rest)) = why.strip_prefix('[').and_then(|w| w.split_once(']')) else {
        return false;
    };
    let string = |field: &str, what: &str| {
        format!(".{field}: expected a {what}string of at most 4096 bytes")
    };
    index.bytes().all(|c| c.is_ascii_digit())
        && (rest == ": expected an object"
            || rest == string("token", "non-empty ")
            || ["type", "url", "source"].iter().any(|f| rest == string(f, "")))
}
