//! What the admin API makes of a request body, before any database: JSON, then the entry an
//! admin sent (its `name` taken out, the rest compiled by the filter's own compiler), the
//! merge patch of an update, the rotation settings. Pure, so that `fuzz/fuzz_targets/admin_body.rs`
//! drives exactly what the handlers run.

use crate::serve::api::Rotation;
use crate::serve::error::ApiError;
use keygate::core::cors::Origins;
use keygate::core::parse;
use serde_json::{Map, Value};

const NAME_CHARS: std::ops::RangeInclusive<usize> = 1..=200;
/// The longest rotation grace period: ten years.
pub const MAX_GRACE_SECONDS: i64 = 10 * 365 * 86_400;

/// A request body as JSON (its size and content type were checked before).
pub fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    // serde_json's syntax errors name a line and column, never the text.
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

/// An entry the filter's compiler accepted, ready to store.
#[derive(Debug)]
pub struct Checked {
    pub id: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    /// Normalised origins, or `*`.
    pub origins: Vec<String>,
    /// The entry as the filter receives it.
    pub json: String,
    /// Its `expires_at` in Unix milliseconds.
    pub expires_ms: Option<i64>,
}

/// Takes `name` out of an admin's entry and compiles the rest as the filter would.
pub fn check(doc: Value) -> Result<Checked, ApiError> {
    let Value::Object(mut entry) = doc else {
        return Err(ApiError::at("entry", "expected a JSON object"));
    };
    // Shown in answers, never stored: the service sets it from usage.
    entry.shift_remove("last_used_at");
    let name = match entry.shift_remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if NAME_CHARS.contains(&n.chars().count()) => Some(n),
        Some(_) => return Err(ApiError::at("name", "expected a string of 1-200 characters")),
    };
    let json = Value::Object(entry).to_string();
    let compiled = parse::entry(json.as_bytes(), "").map_err(ApiError::invalid)?;
    let origins = match &compiled.key.origins {
        None => Vec::new(),
        Some(o) => match &**o {
            Origins::Any => vec!["*".to_string()],
            Origins::List(list) => {
                list.iter().map(|o| String::from_utf8_lossy(o).into_owned()).collect()
            }
        },
    };
    Ok(Checked {
        id: compiled.key.id.to_string(),
        name,
        owner: compiled.key.owner.as_deref().map(str::to_string),
        origins,
        json,
        expires_ms: Some(compiled.key.window.expires_at).filter(|&end| end != i64::MAX),
    })
}

/// A new entry with `id` first, a generated one when the admin gave none.
pub fn with_id(
    doc: Value,
    new_id: impl FnOnce() -> Result<String, ApiError>,
) -> Result<Value, ApiError> {
    match doc {
        Value::Object(map) if !map.contains_key("id") => {
            let mut out = Map::new();
            out.insert("id".into(), Value::from(new_id()?));
            out.extend(map);
            Ok(Value::Object(out))
        }
        other => Ok(other),
    }
}

/// An update: the stored entry (as an admin sees it) with the admin's merge patch applied,
/// checked again. The id stays.
pub fn patched(stored: Value, id: &str, patch: &Value) -> Result<Checked, ApiError> {
    if !patch.is_object() {
        // RFC 7396 would replace the whole entry with it, which is never a valid entry.
        return Err(ApiError::at("entry", "expected a JSON object (a merge patch of the entry)"));
    }
    let mut doc = stored;
    merge_patch(&mut doc, patch);
    if doc.get("id").and_then(Value::as_str) != Some(id) {
        return Err(ApiError::at("id", "cannot be changed (rotate makes a key with a new id)"));
    }
    check(doc)
}

/// RFC 7396 JSON merge patch: objects merge member by member, `null` removes a member,
/// anything else replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.shift_remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A rotation: `{"grace_seconds": N}`, optionally with the successor's `"id"`.
pub fn rotation(body: &Value) -> Result<Rotation, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::at("", "expected a JSON object such as {\"grace_seconds\": 3600}"));
    };
    if let Some(other) = map.keys().find(|k| *k != "grace_seconds" && *k != "id") {
        // Named only when it looks like a mistyped field, never a pasted key (as in entries).
        let path = if parse::looks_like_a_field(other) { other.as_str() } else { "" };
        return Err(ApiError::at(path, "unknown field, expected grace_seconds or id"));
    }
    let grace = map
        .get("grace_seconds")
        .and_then(Value::as_i64)
        .filter(|n| (0..=MAX_GRACE_SECONDS).contains(n))
        .ok_or_else(|| {
            ApiError::at("grace_seconds", "expected a whole number of seconds, 0 to 315360000")
        })?;
    let id = match map.get("id") {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(ApiError::at("id", "expected a string")),
    };
    Ok(Rotation { grace_seconds: grace, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(target: &str, patch: &str) -> String {
        let mut t: Value = serde_json::from_str(target).unwrap_or(Value::Null);
        let p: Value = serde_json::from_str(patch).unwrap_or(Value::Null);
        merge_patch(&mut t, &p);
        t.to_string()
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The examples of RFC 7396, appendix A.
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (r#"{"a":{"b":"c"}}"#, r#"{"a":{"b":"d","c":null}}"#, r#"{"a":{"b":"d"}}"#),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"a":"b"}"#, r#"["c"]"#, r#"["c"]"#),
            (r#"{"a":"foo"}"#, r#"null"#, r#"null"#),
            (r#"{"a":"foo"}"#, r#""bar""#, r#""bar""#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
            (r#"{}"#, r#"{"a":{"bb":{"ccc":null}}}"#, r#"{"a":{"bb":{}}}"#),
        ];
        for (target, patch, result) in cases {
            assert_eq!(merged(target, patch), result, "{target} + {patch}");
        }
    }

    #[test]
    fn names_stay_out_of_the_stored_entry() {
        let doc = json!({"id": "web", "name": "Web player", "owner": "acme",
            "cors": {"allowed_origins": ["HTTPS://A.example:443"]}});
        let key = match check(doc) {
            Ok(k) => k,
            Err(e) => unreachable!("{}", e.body()),
        };
        assert_eq!(key.name.as_deref(), Some("Web player"));
        assert_eq!(key.origins, ["https://a.example"]);
        assert_eq!(
            key.json,
            r#"{"id":"web","owner":"acme","cors":{"allowed_origins":["HTTPS://A.example:443"]}}"#
        );
    }

    #[test]
    fn refused_entries_name_their_path() {
        let refused = |doc: Value| match check(doc) {
            Ok(_) => unreachable!("accepted"),
            Err(e) => (e.path.unwrap_or_default(), e.message),
        };
        assert_eq!(refused(json!({"id": "a", "name": ""})).0, "name");
        assert_eq!(refused(json!({"id": "a", "colour": 1})).0, "colour");
        assert_eq!(
            refused(
                json!({"id": "a", "cors": {"allowed_origins": ["https://a.example", "ftp://x"]}})
            )
            .0,
            "cors.allowed_origins[1]"
        );
        assert_eq!(refused(json!({"id": "a", "sha256": "00"})).0, "sha256");
        assert_eq!(refused(json!(["a"])).0, "entry");
    }

    #[test]
    fn a_patch_keeps_the_id_and_is_checked_again() {
        let stored = json!({"id": "web", "name": "Web", "owner": "acme"});
        let ok = patched(stored.clone(), "web", &json!({"owner": null, "name": "Player"}));
        let ok = ok.map_err(|e| e.body());
        assert_eq!(
            ok.as_ref().map(|k| (k.json.as_str(), k.name.as_deref())),
            Ok((r#"{"id":"web"}"#, Some("Player")))
        );
        let path = |r: Result<Checked, ApiError>| r.err().and_then(|e| e.path);
        assert_eq!(
            path(patched(stored.clone(), "web", &json!({"id": "other"}))).as_deref(),
            Some("id")
        );
        assert_eq!(
            path(patched(stored.clone(), "web", &json!({"id": null}))).as_deref(),
            Some("id")
        );
        assert_eq!(path(patched(stored, "web", &json!([1]))).as_deref(), Some("entry"));
    }

    #[test]
    fn a_rotation_body_never_names_a_pasted_key() {
        let path = |v: Value| rotation(&v).err().and_then(|e| e.path);
        assert_eq!(
            rotation(&json!({"grace_seconds": 60, "id": "b"})).ok(),
            Some(Rotation { grace_seconds: 60, id: Some("b".into()) })
        );
        assert_eq!(path(json!({"grace_secs": 60})).as_deref(), Some("grace_secs"));
        assert_eq!(path(json!({"kg_live_4f9aQ": 60})).as_deref(), Some(""));
        assert_eq!(path(json!({"grace_seconds": -1})).as_deref(), Some("grace_seconds"));
        assert_eq!(path(json!({"grace_seconds": 1, "id": 2})).as_deref(), Some("id"));
    }
}
