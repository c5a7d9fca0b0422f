//! A request body of the key service's admin API, taken as its handlers take it before any
//! database: create (`POST /v1/keys`), update (`PATCH /v1/keys/{id}`, a merge patch of a
//! stored entry) and rotate (`POST /v1/keys/{id}/rotate`); the first byte picks which.
//! Never a panic. An accepted entry compiles again, as the filter will compile it, to the
//! same id, without its `name`; an update keeps the id. A refusal is a 400 with a reason,
//! and neither the reason nor the path names a key pasted into the body.
#![no_main]
use keygate::core::parse::entry;
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
    match which % 3 {
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

fn accepted(k: &Checked) {
    let again = entry(k.json.as_bytes(), "");
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
