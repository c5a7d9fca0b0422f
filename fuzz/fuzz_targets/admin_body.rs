//! A request body of the key service's admin API, taken as its handlers take it before any
//! database: create (`POST /v1/keys`), update (`PATCH /v1/keys/{id}`, a merge patch of a
//! stored entry), rotate (`POST /v1/keys/{id}/rotate`) and an owner's limits
//! (`PUT /v1/owners/{owner}`); the first byte picks which. Accepted limits, in the form the
//! filter forwards them, read back to the same limits.
//! Never a panic. An accepted entry compiles again, as the filter will compile it, to the
//! same id, without its `name`; an update keeps the id. A refusal is a 400 with a reason,
//! and neither the reason nor the path names a key pasted into the body.
#![no_main]
use keygate::core::limits::{header_value, parse_header, Limit, OWNER_ONLY};
use keygate::core::parse::{entry, owner_limits};
use keygate_tools::serve::error::ApiError;
use keygate_tools::serve::request::{
    check, json_body, patched, rotation, with_id, Checked, MAX_GRACE_SECONDS,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let doc = match json_body(body) {
        Ok(doc) => doc,
        Err(e) => return refused(&e),
    };
    if which % 4 == 3 {
        return match owner_limits(body) {
            Ok(limits) => round_trip(&limits),
            Err(e) => {
                assert!(!e.path.is_empty() && !e.reason.is_empty());
                assert!(!e.path.contains("kg_") && !e.reason.contains("kg_"), "{e}");
            }
        };
    }
    match which % 4 {
        0 => match with_id(doc, || Ok("key_0123456789abcdef".into())).and_then(check) {
            Ok(k) => accepted(&k),
            Err(e) => refused(&e),
        },
        1 => {
            let stored = json!({"id": "web", "name": "Web", "owner": "acme",
                "cors": {"allowed_origins": ["https://a.example"]}});
            match patched(stored, "web", &doc) {
                Ok(k) => {
                    assert_eq!(k.id, "web");
                    accepted(&k);
                }
                Err(e) => refused(&e),
            }
        }
        _ => match rotation(&doc) {
            Ok(r) => assert!((0..=MAX_GRACE_SECONDS).contains(&r.grace_seconds)),
            Err(e) => refused(&e),
        },
    }
});

/// A list of limits, forwarded as the filter forwards it, reads back to the same list.
fn round_trip(limits: &[Limit]) {
    match header_value(limits, true) {
        Some(value) if limits.is_empty() => assert_eq!(&*value, OWNER_ONLY),
        Some(value) => assert_eq!(parse_header(&value).as_deref(), Ok(limits), "{value}"),
        None => unreachable!("an owner-limited key always forwards a value"),
    }
}

fn accepted(k: &Checked) {
    let again = entry(k.json.as_bytes(), "");
    if let Ok(compiled) = &again {
        if let Some(value) = &compiled.key.limits {
            assert!(parse_header(value).is_ok(), "{value}");
        }
    }
    assert_eq!(again.as_ref().map(|e| &*e.key.id).ok(), Some(k.id.as_str()), "{}", k.json);
    let stored: Value = serde_json::from_str(&k.json).unwrap_or(Value::Null);
    assert!(stored.is_object() && stored.get("name").is_none(), "{}", k.json);
    assert!(k.name.as_ref().is_none_or(|n| (1..=200).contains(&n.chars().count())));
}

fn refused(e: &ApiError) {
    assert_eq!(e.status.as_u16(), 400, "{}", e.body());
    assert!(!e.message.is_empty());
    let path = e.path.as_deref().unwrap_or("");
    assert!(!path.contains("kg_"), "path {path} names a pasted key");
    assert!(!e.message.contains("kg_"), "{} names a pasted key", e.message);
}
