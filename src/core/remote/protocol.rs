//! The key-service protocol as the filter speaks it: request paths, and the answers it
//! accepts. Every answer is parsed whole and compiled before it is used; anything else is a
//! [`ProtocolError`], which the filter treats like an unreachable service, never a trap.
//!
//! - `GET {prefix}/keys/{sha256}` → `200 {"sha256": <the digest asked for>, "key": <entry>,
//!   "limited_owners": [<owner>]}` or `404`;
//! - `GET {prefix}/origins/{origin}` → `200 {"keys": [<entry>, ...], "limited_owners": [...]}`;
//! - `GET {prefix}/changes[?after=<cursor>]` → `200 {"cursor", "keys", "origins"}` or
//!   `200 {"cursor", "reset": true}`.
//!
//! An entry is a key entry of the plugin configuration without `sha256`/`key`.
//! `limited_owners` (optional) names the owners of those entries that have limits of their
//! own in the service, so that their keys are sent to the rate-limit service too.

use crate::core::config::RawKey;
use crate::core::cors::normalize_origin;
use crate::core::entry::Entry;
use crate::core::hex;
use crate::core::keytable::Digest;
use crate::core::{limits, parse};
use serde::Deserialize;

/// Largest answer body the filter reads; a larger one is an error.
pub const MAX_BODY: usize = 64 * 1024;

/// Longest feed cursor the filter keeps and sends back.
pub const MAX_CURSOR: usize = 256;

/// Why an answer was not used. Never holds a key; the reason may be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(reason: impl Into<String>) -> ProtocolError {
    ProtocolError(reason.into())
}

pub fn key_path(prefix: &str, digest: &Digest) -> String {
    let mut path = String::with_capacity(prefix.len() + 6 + 64);
    path.push_str(prefix);
    path.push_str("/keys/");
    hex::push(&mut path, digest);
    path
}

pub fn origin_path(prefix: &str, origin: &[u8]) -> String {
    let mut path = String::with_capacity(prefix.len() + 9 + origin.len() * 3);
    path.push_str(prefix);
    path.push_str("/origins/");
    push_encoded(&mut path, origin);
    path
}

/// A feed poll: from the start, or after `cursor`, then held up to `wait_ms` (0: not held)
/// until something changes. The first poll is never held: it only learns the cursor.
pub fn changes_path(prefix: &str, cursor: Option<&str>, wait_ms: u32) -> String {
    let mut path = format!("{prefix}/changes");
    if let Some(c) = cursor {
        path.push_str("?after=");
        push_encoded(&mut path, c.as_bytes());
        if wait_ms > 0 {
            path.push_str("&wait_ms=");
            path.push_str(&wait_ms.to_string());
        }
    }
    path
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so the value is one
/// path segment (or one query value).
fn push_encoded(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            hex::push(out, &[b]);
        }
    }
}

/// Checks what every answer must be before its body is read: its status is handled by the
/// caller; here the content type (`application/json`, parameters allowed) and the size.
pub fn check_body(content_type: Option<&[u8]>, body_size: usize) -> Result<(), ProtocolError> {
    let json = content_type.is_some_and(|ct| {
        let essence = ct.split(|&c| c == b';').next().unwrap_or_default().trim_ascii();
        essence.eq_ignore_ascii_case(b"application/json")
    });
    if !json {
        return Err(error("content-type is not application/json"));
    }
    if body_size > MAX_BODY {
        return Err(error(format!("body of {body_size} bytes is over {MAX_BODY}")));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAnswer {
    /// The digest this answer is for. An entry names no key, so without it a service (or a
    /// cache in front of it) that answered for another key would be believed.
    sha256: String,
    key: RawKey,
    #[serde(default)]
    limited_owners: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginAnswer {
    keys: Vec<RawKey>,
    #[serde(default)]
    limited_owners: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesAnswer {
    cursor: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    origins: Vec<String>,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    more: bool,
    behind: Option<u64>,
}

/// A `200` answer to `keys/{sha256}` for `asked`: the entry, compiled.
pub fn parse_key(body: &[u8], asked: &Digest) -> Result<Entry, ProtocolError> {
    let answer: KeyAnswer = json(body)?;
    if hex::digest(&answer.sha256).as_ref() != Some(asked) {
        return Err(error("sha256: not the digest asked for"));
    }
    let mut entry = parse::stored_entry(answer.key, "key").map_err(|e| error(e.to_string()))?;
    owner_limits(&mut entry, &answer.limited_owners);
    Ok(entry)
}

/// A key without limits of its own is still limited when its owner has limits: the answer
/// names such owners (`limited_owners`), since the owner's limits live in the service.
fn owner_limits(entry: &mut Entry, limited_owners: &[String]) {
    let key = &mut entry.key;
    let limited = key.owner.as_deref().is_some_and(|o| limited_owners.iter().any(|l| l == o));
    if limited && key.limits.is_none() {
        key.limits = limits::header_value(&[], true);
    }
}

/// A `200` answer to `origins/{origin}`: CORS entries that list `origin` or `"*"`.
pub fn parse_origin(body: &[u8], origin: &[u8]) -> Result<Vec<Entry>, ProtocolError> {
    let answer: OriginAnswer = json(body)?;
    let mut entries = Vec::with_capacity(answer.keys.len());
    for (i, raw) in answer.keys.into_iter().enumerate() {
        let at = format!("keys[{i}]");
        let mut entry = parse::stored_entry(raw, &at).map_err(|e| error(e.to_string()))?;
        owner_limits(&mut entry, &answer.limited_owners);
        match &entry.key.origins {
            Some(o) if o.allows(origin) => entries.push(entry),
            Some(_) => return Err(error(format!("{at}: does not list the origin asked for"))),
            None => return Err(error(format!("{at}: not a CORS key"))),
        }
    }
    Ok(entries)
}

/// What the feed says changed since the cursor the filter sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub cursor: String,
    /// Drop every cached answer.
    pub reset: bool,
    pub keys: Vec<Digest>,
    /// Origins as browsers send them; `None` stands for `"*"`: every origin.
    pub origins: Vec<Option<Box<[u8]>>>,
    /// The answer stopped at its limit: poll again at once.
    pub more: bool,
    /// Changes still to come after this answer, as the service counts them.
    pub behind: Option<u64>,
}

pub fn parse_changes(body: &[u8]) -> Result<Changes, ProtocolError> {
    let answer: ChangesAnswer = json(body)?;
    let cursor_ok = !answer.cursor.is_empty()
        && answer.cursor.len() <= MAX_CURSOR
        && answer.cursor.bytes().all(|c| c.is_ascii_graphic());
    if !cursor_ok {
        return Err(error("cursor: expected 1-256 visible ASCII characters"));
    }
    let mut keys = Vec::with_capacity(answer.keys.len());
    for (i, hex) in answer.keys.iter().enumerate() {
        keys.push(
            hex::digest(hex)
                .ok_or_else(|| error(format!("keys[{i}]: expected a SHA-256 hex digest")))?,
        );
    }
    let mut origins = Vec::with_capacity(answer.origins.len());
    for (i, o) in answer.origins.iter().enumerate() {
        if o == "*" {
            origins.push(None);
            continue;
        }
        let normal = normalize_origin(o).map_err(|r| error(format!("origins[{i}]: {r}")))?;
        origins.push(Some(normal.into_bytes().into_boxed_slice()));
    }
    Ok(Changes {
        cursor: answer.cursor,
        reset: answer.reset,
        keys,
        origins,
        more: answer.more,
        behind: answer.behind,
    })
}

fn json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ProtocolError> {
    // Read through the same tracking deserializer as the plugin configuration, so the entry
    // schema is compiled into the module once. Messages name the JSON path and the kind of
    // value, never the value (it could be a key).
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let value = T::deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
        .map_err(|e| {
            let kept =
                if e.is_data() { parse::without_values(&e.to_string()) } else { e.to_string() };
            let path = parse::scrub_path(track.path().to_string(), &e.to_string());
            error(format!("answer does not fit the protocol at {path}: {kept}"))
        })?;
    de.end().map_err(|e| error(format!("answer does not fit the protocol: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keytable::sha256;

    #[test]
    fn paths_carry_the_digest_and_encode_the_origin_as_one_segment() {
        let d = sha256(b"abc");
        assert_eq!(
            key_path("/v1/filter", &d),
            "/v1/filter/keys/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            origin_path("/p", b"https://a.example:8443"),
            "/p/origins/https%3a%2f%2fa.example%3a8443"
        );
        assert_eq!(changes_path("/p", None, 0), "/p/changes");
        assert_eq!(changes_path("/p", None, 25_000), "/p/changes", "the first poll is not held");
        assert_eq!(changes_path("/p", Some("7:a b"), 0), "/p/changes?after=7%3aa%20b");
        assert_eq!(changes_path("/p", Some("c"), 25_000), "/p/changes?after=c&wait_ms=25000");
    }

    #[test]
    fn answers_are_checked_for_type_and_size_first() {
        assert!(check_body(Some(b"application/json"), 10).is_ok());
        assert!(check_body(Some(b"Application/JSON; charset=utf-8"), 10).is_ok());
        assert!(check_body(Some(b"text/html"), 10).is_err());
        assert!(check_body(None, 10).is_err());
        assert!(check_body(Some(b"application/json"), MAX_BODY + 1).is_err());
    }

    #[test]
    fn key_answers_compile_like_static_entries() {
        let asked = [0xab; 32];
        let ab = "ab".repeat(32);
        let answer = |entry: &str| format!(r#"{{"sha256": "{ab}", "key": {entry}}}"#);
        let e = parse_key(answer(r#"{"id": "r1", "owner": "acme"}"#).as_bytes(), &asked);
        assert!(e.is_ok_and(|e| &*e.key.id == "r1"));
        let refused =
            |body: &str| parse_key(body.as_bytes(), &asked).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(
            refused(&answer(r#"{"id": "r1", "sha256": "ab"}"#)),
            "key.sha256: not part of a stored entry: the key service keeps the digest itself"
        );
        assert!(refused(&format!(r#"{{"sha256": "{ab}", "key": {{"id": "r1"}}, "extra": 1}}"#))
            .starts_with("answer does not fit"));
        assert!(refused(&format!(r#"{{"sha256": "{ab}", "key": {{"id": "r1""#))
            .starts_with("answer does not fit"));
        assert!(refused(&answer(r#"{"id": "kg_secret_value", "disabled": "kg_secret_value"}"#))
            .starts_with("answer does not fit"));
        assert!(!refused(&answer(r#"{"id": "x", "owner": 7}"#)).contains('7'));
        assert_eq!(
            refused(&answer(r#"{"id": "r1", "cors": {"allowed_origins": ["null"]}}"#))
                .split(':')
                .next(),
            Some("key.cors.allowed_origins[0]")
        );
    }

    #[test]
    fn a_key_answer_is_for_the_digest_asked_for() {
        let asked = [0xab; 32];
        let for_digest = |hex: &str| {
            let body = format!(r#"{{"sha256": "{hex}", "key": {{"id": "r1"}}}}"#);
            parse_key(body.as_bytes(), &asked).map(|e| e.key.id.to_string())
        };
        assert_eq!(for_digest(&"ab".repeat(32)), Ok("r1".into()));
        assert_eq!(for_digest(&"AB".repeat(32)), Ok("r1".into()), "hex in either case");
        for other in ["cd".repeat(32), "ab".repeat(31), String::new(), "zz".repeat(32)] {
            assert_eq!(for_digest(&other), Err(error("sha256: not the digest asked for")));
        }
        let without = parse_key(br#"{"key": {"id": "r1"}}"#, &asked);
        assert!(without.is_err_and(|e| e.0.starts_with("answer does not fit")));
    }

    #[test]
    fn origin_answers_hold_cors_keys_for_that_origin_only() {
        let ok = br#"{"keys": [{"id": "a", "cors": {"allowed_origins": ["https://a.example"]}}, {"id": "b", "cors": {"allowed_origins": ["*"], "full_access": true}}]}"#;
        assert_eq!(parse_origin(ok, b"https://a.example").map(|v| v.len()), Ok(2));
        assert!(parse_origin(ok, b"https://b.example").is_err(), "a lists another origin");
        assert!(parse_origin(br#"{"keys": [{"id": "a"}]}"#, b"https://a.example").is_err());
        assert_eq!(parse_origin(br#"{"keys": []}"#, b"https://a.example").map(|v| v.len()), Ok(0));
    }

    #[test]
    fn changes_list_digests_and_normalised_origins() {
        let d = hex::encode(&sha256(b"k"));
        let body = format!(
            r#"{{"cursor": "c2", "keys": ["{d}"], "origins": ["https://A.example:443", "*"]}}"#
        );
        let c = parse_changes(body.as_bytes());
        assert_eq!(
            c,
            Ok(Changes {
                cursor: "c2".into(),
                reset: false,
                keys: vec![sha256(b"k")],
                origins: vec![Some(b"https://a.example".as_slice().into()), None],
                more: false,
                behind: None,
            })
        );
        let c = parse_changes(br#"{"cursor": "c", "more": true, "behind": 4744}"#);
        assert!(c.is_ok_and(|c| c.more && c.behind == Some(4744)));
        assert!(parse_changes(br#"{"cursor": "c", "reset": true}"#).is_ok_and(|c| c.reset));
        assert!(parse_changes(br#"{"cursor": ""}"#).is_err());
        assert!(parse_changes(br#"{"cursor": "c", "keys": ["zz"]}"#).is_err());
        assert!(parse_changes(br#"{"keys": []}"#).is_err());
    }
}
