//! Properties of the pure core, checked on generated inputs.

mod common;

use common::{hex, policy, req};
use keygate::core::policy::Policy;
use keygate::core::token::{bearer_key, MAX_KEY_LEN};
use keygate::core::verdict::Outcome;
use keygate::filter::headers;
use proptest::prelude::*;

const TOKEN_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";

fn token() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(
            proptest::sample::select(TOKEN_CHARS.as_bytes().to_vec()),
            1..200,
        ),
        0..3usize,
    )
        .prop_map(|(body, pad)| String::from_utf8(body).unwrap_or_default() + &"=".repeat(pad))
}

fn is_exactly_bearer(value: &[u8]) -> bool {
    if value.len() < 8 || !value[..6].eq_ignore_ascii_case(b"bearer") || value[6] != b' ' {
        return false;
    }
    let key = &value[7..];
    let body = key.iter().take_while(|c| TOKEN_CHARS.as_bytes().contains(c)).count();
    (1..=MAX_KEY_LEN).contains(&key.len()) && body > 0 && key[body..].iter().all(|&c| c == b'=')
}

proptest! {
    #[test]
    fn only_scheme_space_token_is_accepted(value in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(bearer_key(&value).is_some(), is_exactly_bearer(&value));
    }

    #[test]
    fn near_misses_of_a_valid_header_are_refused(key in token(), at in any::<prop::sample::Index>(),
                                                 byte in any::<u8>()) {
        let mut value = format!("Bearer {key}").into_bytes();
        let i = at.index(value.len());
        value.insert(i, byte);
        prop_assert_eq!(bearer_key(&value).is_some(), is_exactly_bearer(&value));
    }

    #[test]
    fn a_valid_header_for_a_configured_key_is_always_accepted(key in token(), scheme in "[bB][eE][aA][rR][eE][rR]") {
        let p = policy(&format!(r#"{{"keys":[{{"id":"k","sha256":"{}"}}]}}"#, hex(&key)));
        let header = format!("{scheme} {key}");
        let v = req("GET", "/any").auth(&header).decide(&p, 0);
        prop_assert_eq!(v.outcome, Outcome::Allowed);
    }

    #[test]
    fn unsafe_paths_never_match_a_rule(prefix in "[a-z]{1,6}", trick in unsafe_piece(), suffix in "[a-z0-9]{0,6}",
                                       at in 0..3usize) {
        // Templates that would match the path if it were plain: literal, {param} and trailing *.
        let p = policy(r#"{"keys":[], "public_endpoints":[
            {"methods":["*"],"paths":["/*"]},
            {"methods":["*"],"paths":["/{a}", "/{a}/{b}", "/{a}/{b}/{c}"]}]}"#);
        let piece = format!("{prefix}{trick}{suffix}");
        let path = match at {
            0 => format!("/{piece}"),
            1 => format!("/{prefix}/{piece}"),
            _ => format!("/{piece}/{prefix}"),
        };
        let v = req("GET", &path).decide(&p, 0);
        prop_assert_eq!(v.outcome, Outcome::DeniedMissing, "{} matched", path);
    }

    #[test]
    fn the_config_compiler_never_panics_on_arbitrary_json(value in json_value()) {
        if let Err(e) = Policy::from_json(value.to_string().as_bytes()) {
            prop_assert!(!e.path.is_empty() && !e.reason.is_empty());
        }
    }

    #[test]
    fn the_config_compiler_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = Policy::from_json(&bytes) {
            prop_assert!(!e.path.is_empty());
        }
    }

    #[test]
    fn header_maps_round_trip_and_garbage_never_panics(
        pairs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20),
                                            proptest::collection::vec(any::<u8>(), 0..40)), 0..10),
        garbage in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let borrowed: Vec<(&[u8], &[u8])> = pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
        let map = headers::serialize(&borrowed);
        let back: Vec<(&[u8], &[u8])> = headers::pairs(&map).collect();
        prop_assert_eq!(back, borrowed);
        let _ = headers::pairs(&garbage).count();
    }
}

/// One thing that makes a segment unsafe, in any case.
fn unsafe_piece() -> impl Strategy<Value = String> {
    let fixed = prop_oneof![
        Just("/./".to_string()),
        Just("/../".to_string()),
        Just("//".to_string()),
        Just("\\".to_string()),
        Just(";".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("%2f".to_string()),
        Just("%2F".to_string()),
        Just("%5c".to_string()),
        Just("%5C".to_string()),
        Just("%252e".to_string()),
        Just("%252F".to_string()),
        Just("%255c".to_string()),
        Just("%7F".to_string()),
    ];
    let control = (0u8..0x20).prop_map(|b| format!("%{b:02X}"));
    prop_oneof![fixed, control]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        "[a-zA-Z0-9:/.*{}_ -]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "keys", "id", "sha256", "key", "cors", "rules", "paths", "methods", "*", "/a/{id}"
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let names = prop::sample::select(vec![
            "keys",
            "id",
            "sha256",
            "key",
            "owner",
            "expires_at",
            "not_before",
            "disabled",
            "cors",
            "allowed_origins",
            "full_access",
            "rules",
            "methods",
            "paths",
            "resources",
            "cors_endpoints",
            "public_endpoints",
            "forward",
            "mode",
            "other",
        ]);
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((names, inner), 0..5).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}
