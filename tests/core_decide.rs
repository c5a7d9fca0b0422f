//! The whole decision, natively: every outcome and whether the origin may read it.

mod common;

use common::{hex, policy, req};
use keygate::core::verdict::Outcome::{self, *};

const NOW: i64 = 1_800_000_000_000; // 2027-01-15

fn config() -> String {
    format!(
        r#"{{
        "keys": [
          {{ "id": "backend", "sha256": "{}", "owner": "o" }},
          {{ "id": "web", "sha256": "{}", "cors": {{ "allowed_origins": ["https://app.example.com"] }},
             "resources": ["s1"] }},
          {{ "id": "star", "sha256": "{}", "cors": {{ "allowed_origins": ["*"] }},
             "rules": [ {{ "methods": ["GET"], "paths": ["/open/*"] }} ] }},
          {{ "id": "partner", "sha256": "{}", "rules": [ {{ "methods": ["GET"], "paths": ["/api/asset/{{id}}"] }} ] }},
          {{ "id": "off", "sha256": "{}", "disabled": true, "cors": {{ "allowed_origins": ["https://dead.example"], "full_access": true }} }},
          {{ "id": "window", "sha256": "{}", "not_before": "2027-01-01T00:00:00Z", "expires_at": "2027-02-01T00:00:00Z",
             "cors": {{ "allowed_origins": ["https://window.example"], "full_access": true }} }}
        ],
        "cors_endpoints": [ {{ "methods": ["GET", "PATCH"], "paths": ["/api/stream/{{id}}"] }},
                            {{ "methods": ["POST"], "paths": ["/api/stream"] }} ],
        "public_endpoints": [ {{ "methods": ["GET"], "paths": ["/healthz"] }} ]
      }}"#,
        hex("kb"),
        hex("kw"),
        hex("ks"),
        hex("kp"),
        hex("ko"),
        hex("kt")
    )
}

fn check(r: common::Req, outcome: Outcome, key: Option<&str>, readable: bool) {
    let p = policy(&config());
    let v = r.decide(&p, NOW);
    assert_eq!(
        (v.outcome, v.key.map(|k| &*k.id), v.allow_origin),
        (outcome, key, readable),
        "{:?}",
        r.0
    );
}

#[test]
fn authentication_outcomes() {
    check(req("GET", "/x"), DeniedMissing, None, false);
    check(req("GET", "/x").auth("Bearer kb"), Allowed, Some("backend"), false);
    check(req("GET", "/x").auth("bearer kb"), Allowed, Some("backend"), false);
    check(req("GET", "/x").auth("Bearer  kb"), DeniedMalformed, None, false);
    check(req("GET", "/x").auth("Bearer kb").auth("Bearer kb"), DeniedMalformed, None, false);
    check(req("GET", "/x").auth("Bearer nope"), DeniedUnknown, None, false);
    check(req("GET", "/x").auth("Bearer ko"), DeniedDisabled, Some("off"), false);
}

#[test]
fn validity_window_boundaries_are_exact() {
    let p = policy(&config());
    let at = |ms: i64| req("GET", "/x").auth("Bearer kt").decide(&p, ms).outcome;
    let start = 1_798_761_600_000; // 2027-01-01T00:00:00Z
    let end = 1_801_440_000_000; // 2027-02-01T00:00:00Z
    assert_eq!(at(start - 1), DeniedNotYetValid);
    assert_eq!(at(start), Allowed);
    assert_eq!(at(end - 1), Allowed);
    assert_eq!(at(end), DeniedExpired);
}

#[test]
fn browser_rules() {
    let app = "https://app.example.com";
    check(
        req("GET", "/x").auth("Bearer kb").origin(app),
        DeniedBackendKeyFromBrowser,
        Some("backend"),
        false,
    );
    check(
        req("GET", "/api/stream/s1").auth("Bearer kw").origin("https://evil.example"),
        DeniedOrigin,
        Some("web"),
        false,
    );
    check(
        req("GET", "/api/stream/s1").auth("Bearer kw").origin("null"),
        DeniedOrigin,
        Some("web"),
        false,
    );
    check(req("GET", "/api/stream/s1").auth("Bearer kw").origin(app), Allowed, Some("web"), true);
    check(
        req("GET", "/api/stream/s2").auth("Bearer kw").origin(app),
        DeniedResource,
        Some("web"),
        true,
    );
    check(req("POST", "/api/stream").auth("Bearer kw").origin(app), Allowed, Some("web"), true);
    check(
        req("DELETE", "/api/stream/s1").auth("Bearer kw").origin(app),
        DeniedEndpoint,
        Some("web"),
        true,
    );
    // Without Origin the same restrictions hold, and nothing is CORS-readable.
    check(req("GET", "/api/stream/s2").auth("Bearer kw"), DeniedResource, Some("web"), false);
    check(req("GET", "/api/other").auth("Bearer kw"), DeniedEndpoint, Some("web"), false);
    // A "*" key with its own rules; several Origin headers match nothing.
    check(
        req("GET", "/open/a/b").auth("Bearer ks").origin("https://x.example"),
        Allowed,
        Some("star"),
        true,
    );
    check(
        req("GET", "/open/a").auth("Bearer ks").origin(app).origin(app),
        DeniedOrigin,
        Some("star"),
        false,
    );
    check(req("GET", "/closed").auth("Bearer ks"), DeniedEndpoint, Some("star"), false);
    check(req("GET", "/api/asset/a").auth("Bearer kp"), Allowed, Some("partner"), false);
    check(req("PATCH", "/api/asset/a").auth("Bearer kp"), DeniedEndpoint, Some("partner"), false);
}

#[test]
fn own_401_is_readable_only_for_an_origin_an_active_cors_key_allows() {
    check(
        req("GET", "/x").auth("Bearer nope").origin("https://app.example.com"),
        DeniedUnknown,
        None,
        true,
    );
    check(
        req("GET", "/x").auth("Bearer nope").origin("https://any.example"),
        DeniedUnknown,
        None,
        true,
    ); // "*"
    check(req("GET", "/x").auth("Bearer nope").origin("null"), DeniedUnknown, None, false);
    check(req("GET", "/x").origin("https://app.example.com"), DeniedMissing, None, true);
}

#[test]
fn disabled_and_out_of_window_keys_grant_no_origin() {
    let without_star = config().replace(r#""allowed_origins": ["*"]"#, r#""allowed_origins": []"#);
    let p = policy(&without_star);
    let v = req("GET", "/x").auth("Bearer nope").origin("https://dead.example").decide(&p, NOW);
    assert_eq!((v.outcome, v.allow_origin), (DeniedUnknown, false));
    let pre = |ms| {
        req("OPTIONS", "/x")
            .origin("https://window.example")
            .preflight("GET")
            .decide(&p, ms)
            .outcome
    };
    assert_eq!(pre(NOW), PreflightAllowed);
    assert_eq!(pre(1_801_440_000_000), PreflightDenied);
    assert_eq!(pre(1_798_761_599_999), PreflightDenied);
}

#[test]
fn public_endpoints() {
    check(req("GET", "/healthz"), Public, None, false);
    check(req("GET", "/healthz?probe=1").origin("https://x.example"), Public, None, true);
    check(
        req("GET", "/healthz").auth("Bearer nope").origin("https://x.example"),
        DeniedUnknown,
        None,
        true,
    );
    check(
        req("GET", "/healthz").auth("Bearer kb").origin("https://x.example"),
        Allowed,
        Some("backend"),
        true,
    );
    check(
        req("GET", "/healthz").auth("Bearer kw").origin("https://x.example"),
        Allowed,
        Some("web"),
        true,
    );
    check(req("POST", "/healthz"), DeniedMissing, None, false);
    check(req("GET", "/healthz/"), DeniedMissing, None, false);
    check(req("GET", "/./healthz"), DeniedMissing, None, false);
}

#[test]
fn preflights() {
    let app = "https://app.example.com";
    check(
        req("OPTIONS", "/api/stream/zz").origin(app).preflight("PATCH"),
        PreflightAllowed,
        None,
        true,
    );
    check(
        req("OPTIONS", "/api/stream/zz").origin(app).preflight("DELETE"),
        PreflightDenied,
        None,
        false,
    );
    check(
        req("OPTIONS", "/healthz").origin("https://x.example").preflight("GET"),
        PreflightAllowed,
        None,
        true,
    );
    check(
        req("OPTIONS", "/open/x").origin("https://x.example").preflight("GET"),
        PreflightAllowed,
        None,
        true,
    );
    check(req("OPTIONS", "/open/x").origin("null").preflight("GET"), PreflightDenied, None, false);
    check(
        req("OPTIONS", "/api/stream/zz").origin(app).preflight("GET").preflight("GET"),
        PreflightDenied,
        None,
        false,
    );
    check(
        req("OPTIONS", "/api/stream/zz").origin(app).preflight("GE T"),
        PreflightDenied,
        None,
        false,
    );
    // OPTIONS without both headers is an ordinary request.
    check(req("OPTIONS", "/api/stream/zz").origin(app), DeniedMissing, None, true);
    check(req("OPTIONS", "/x").preflight("GET").auth("Bearer kb"), Allowed, Some("backend"), false);
}
