//! The decision with a key service: a cached remote key is decided exactly like the same
//! key in the static table; misses ask; failures serve stale answers or the 503.

mod common;

use common::{hex, policy, req};
use keygate::core::decide::{Ask, Decision, Failed, Remote};
use keygate::core::keytable::sha256;
use keygate::core::parse;
use keygate::core::policy::Policy;
use keygate::core::remote::cache::RemoteCache;
use keygate::core::verdict::{Outcome, RemoteUse};

const NOW: i64 = 1_000_000;
const SERVICE: &str = r#""key_service": {"cluster": "keys", "cache": {"ttl_seconds": 60, "negative_ttl_seconds": 10, "stale_if_error_seconds": 300}}"#;
const ENTRY: &str = r#"{"id": "web", "owner": "acme", "cors": {"allowed_origins": ["https://app.example"]},
    "rules": [{"methods": ["GET"], "paths": ["/v1/streams/{id}"]}], "resources": ["s1"]}"#;

fn remote_policy() -> Policy {
    policy(&format!(
        r#"{{"keys": [{{"id": "static", "sha256": "{}"}}], {SERVICE}}}"#,
        hex("static-key")
    ))
}

fn cache(p: &Policy) -> RemoteCache {
    match p.remote.as_ref().and_then(|s| RemoteCache::new(s.cache)) {
        Some(c) => c,
        None => unreachable!("no cache"),
    }
}

fn answer(c: &mut RemoteCache, key: &str, entry: Option<&str>, at: i64) {
    let entry = entry.map(|json| match parse::entry(json.as_bytes(), "key") {
        Ok(e) => e,
        Err(e) => unreachable!("{e}"),
    });
    c.insert(c.tag(key.as_bytes()), sha256(key.as_bytes()), entry, at);
}

fn outcome(d: Decision) -> (Outcome, RemoteUse, Option<String>) {
    match d {
        Decision::Done(v) => (v.outcome, v.remote, v.key.map(|k| k.id.to_string())),
        Decision::Ask(a) => unreachable!("asked {a:?}"),
    }
}

#[test]
fn a_cached_remote_key_is_decided_like_the_same_static_key() {
    let p = remote_policy();
    let mut c = cache(&p);
    answer(&mut c, "remote-key", Some(ENTRY), NOW);
    let static_p = policy(&format!(
        r#"{{"keys": [{}]}}"#,
        ENTRY.replacen("{", &format!(r#"{{"sha256": "{}", "#, hex("remote-key")), 1)
    ));
    let view = Some(Remote { cache: &c, failed: Failed::NONE });
    let cases = [
        ("GET", "/v1/streams/s1", Some("https://app.example")),
        ("GET", "/v1/streams/s2", Some("https://app.example")),
        ("POST", "/v1/streams/s1", Some("https://app.example")),
        ("GET", "/v1/streams/s1", Some("https://evil.example")),
        ("GET", "/v1/streams/s1", None),
    ];
    for (method, path, origin) in cases {
        let mut r = req(method, path).auth("Bearer remote-key");
        if let Some(o) = origin {
            r = r.origin(o);
        }
        let remote = outcome(p.decide_with(&r.0, NOW + 1, view));
        let local = r.decide(&static_p, NOW + 1);
        assert_eq!(remote.0, local.outcome, "{method} {path} {origin:?}");
        assert_eq!(remote.2.as_deref(), local.key.map(|k| &*k.id));
        assert_eq!(remote.1, RemoteUse::Hit);
    }
}

#[test]
fn static_keys_never_ask_and_misses_ask_for_the_digest() {
    let p = remote_policy();
    let c = cache(&p);
    let view = Some(Remote { cache: &c, failed: Failed::NONE });
    let r = req("GET", "/x").auth("Bearer static-key");
    assert_eq!(outcome(p.decide_with(&r.0, NOW, view)).0, Outcome::Allowed);
    let r = req("GET", "/x").auth("Bearer new-key");
    match p.decide_with(&r.0, NOW, view) {
        Decision::Ask(Ask::Key { digest, tag }) => {
            assert_eq!(digest, sha256(b"new-key"));
            assert_eq!(tag, c.tag(b"new-key"));
        }
        other => unreachable!("{other:?}"),
    }
    // Malformed headers never ask.
    let r = req("GET", "/x").auth("Bearer  new-key");
    assert_eq!(outcome(p.decide_with(&r.0, NOW, view)).0, Outcome::DeniedMalformed);
}

#[test]
fn failures_serve_stale_answers_then_the_503_and_404s_stay_401s() {
    let p = remote_policy();
    let mut c = cache(&p);
    answer(&mut c, "remote-key", Some(r#"{"id": "r"}"#), NOW);
    answer(&mut c, "gone-key", None, NOW);
    let expired = NOW + 61_000;
    let failed = Some(Remote { cache: &c, failed: Failed::BOTH });
    let r = req("GET", "/x").auth("Bearer remote-key");
    assert_eq!(
        outcome(p.decide_with(&r.0, expired, failed)),
        (Outcome::Allowed, RemoteUse::Stale, Some("r".into()))
    );
    let past_stale = NOW + 60_000 + 300_000;
    assert_eq!(outcome(p.decide_with(&r.0, past_stale, failed)).0, Outcome::Unavailable);
    let r = req("GET", "/x").auth("Bearer never-seen");
    assert_eq!(outcome(p.decide_with(&r.0, NOW, failed)).0, Outcome::Unavailable);
    let r = req("GET", "/x").auth("Bearer gone-key");
    assert_eq!(
        outcome(p.decide_with(&r.0, NOW + 1, failed)),
        (Outcome::DeniedUnknown, RemoteUse::NegativeHit, None)
    );
    assert_eq!(
        Outcome::Unavailable.reply().map(|r| (r.status, r.body, r.retry_after)),
        Some((
            503,
            r#"{"error": "Service Unavailable", "message": "API key could not be verified"}"#,
            Some("1")
        ))
    );
}

#[test]
fn preflights_and_readable_401s_ask_for_the_origin_once() {
    let p = remote_policy();
    let mut c = cache(&p);
    let pre = req("OPTIONS", "/v1/streams/s1").origin("https://app.example").preflight("GET");
    assert!(matches!(
        p.decide_with(&pre.0, NOW, Some(Remote { cache: &c, failed: Failed::NONE })),
        Decision::Ask(Ask::Origin)
    ));
    let entry = match parse::entry(ENTRY.as_bytes(), "keys[0]") {
        Ok(e) => e,
        Err(e) => unreachable!("{e}"),
    };
    c.insert_origin(b"https://app.example", vec![entry], NOW);
    let view = Some(Remote { cache: &c, failed: Failed::NONE });
    assert_eq!(outcome(p.decide_with(&pre.0, NOW, view)).0, Outcome::PreflightAllowed);
    let other_method =
        req("OPTIONS", "/v1/streams/s1").origin("https://app.example").preflight("DELETE");
    assert_eq!(outcome(p.decide_with(&other_method.0, NOW, view)).0, Outcome::PreflightDenied);
    match p.decide_with(&req("GET", "/x").origin("https://app.example").0, NOW, view) {
        Decision::Done(v) => assert!(v.outcome == Outcome::DeniedMissing && v.allow_origin),
        other => unreachable!("{other:?}"),
    }
    // The origin's keys could not be learnt: the preflight gets the 503, a 401 stays unreadable.
    let c2 = cache(&p);
    let failed = Some(Remote { cache: &c2, failed: Failed::BOTH });
    assert_eq!(outcome(p.decide_with(&pre.0, NOW, failed)).0, Outcome::Unavailable);
    match p.decide_with(&req("GET", "/x").origin("https://app.example").0, NOW, failed) {
        Decision::Done(v) => assert!(v.outcome == Outcome::DeniedMissing && !v.allow_origin),
        other => unreachable!("{other:?}"),
    }
}

#[test]
fn key_service_settings_are_validated_with_paths() {
    let refused =
        |ks: &str| common::config_error(&format!(r#"{{"keys": [], "key_service": {ks}}}"#));
    assert_eq!(refused("{}").split(" at ").next(), Some("key_service: missing field `cluster`"));
    assert_eq!(
        refused(r#"{"cluster": ""}"#),
        "key_service.cluster: expected an Envoy cluster name"
    );
    assert_eq!(
        refused(r#"{"cluster": "k", "path_prefix": "v1"}"#).split(':').next(),
        Some("key_service.path_prefix")
    );
    assert_eq!(
        refused(r#"{"cluster": "k", "max_pending": 0}"#),
        "key_service.max_pending: expected 1 to 65536"
    );
    assert_eq!(
        refused(r#"{"cluster": "k", "cache": {"negative_ttl_seconds": 0}}"#),
        "key_service.cache.negative_ttl_seconds: expected 1 to 3600"
    );
    let p = policy(r#"{"keys": [], "key_service": {"cluster": "keygate-keys"}}"#);
    let s = p.remote.as_ref();
    assert_eq!(
        s.map(|s| (&*s.authority, &*s.path_prefix, s.timeout_ms, s.changes_poll_ms, s.max_pending)),
        Some(("keygate-keys", "/v1/filter", 250, 1000, 256))
    );
    assert_eq!(
        s.map(|s| (
            s.cache.max_entries,
            s.cache.ttl_ms,
            s.cache.negative_ttl_ms,
            s.cache.stale_if_error_ms
        )),
        Some((100_000, 60_000, 10_000, 300_000))
    );
}
