//! What keygate sends for each kind of verdict: the exact status, headers and body.

mod common;

use common::{hex, policy, req};
use keygate::core::policy::Policy;
use keygate::core::response::{respond, Response};

fn config(mode: &str) -> String {
    format!(
        r#"{{
        "mode": "{mode}",
        "keys": [
          {{ "id": "backend", "sha256": "{}", "owner": "o" }},
          {{ "id": "web", "sha256": "{}", "cors": {{ "allowed_origins": ["https://app.example"] }} }}
        ],
        "cors_endpoints": [ {{ "methods": ["GET"], "paths": ["/api/*"] }} ],
        "cors": {{ "expose_headers": ["x-total"], "allow_credentials": true, "max_age_seconds": 60 }}
      }}"#,
        hex("kb"),
        hex("kw")
    )
}

/// `(status or 0 when forwarded, headers as text, body)`.
fn answer(p: &Policy, r: &common::Req) -> (u32, Vec<String>, String) {
    let verdict = r.decide(p, 0);
    let text = |pairs: &[(&[u8], &[u8])]| {
        pairs
            .iter()
            .map(|(n, v)| format!("{}: {}", String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
    };
    match respond(p, &verdict, &r.0) {
        Response::Reply { status, headers, body } => (status, text(&headers.list()), body.into()),
        Response::Forward { identity, would_deny, cors } => {
            let mut h = text(&cors.list());
            if let Some(k) = identity {
                h.insert(0, format!("forward key_id: {}", k.id));
            }
            if let Some(o) = would_deny {
                h.insert(0, format!("forward would_deny: {o}"));
            }
            (0, h, String::new())
        }
    }
}

#[test]
fn an_unknown_key_gets_the_documented_401() {
    let p = policy(&config("enforce"));
    let (status, headers, body) = answer(&p, &req("GET", "/x").auth("Bearer nope"));
    assert_eq!(status, 401);
    assert_eq!(body, r#"{"error": "Unauthorized", "message": "Invalid API key"}"#);
    assert_eq!(
        headers,
        ["content-type: application/json", r#"www-authenticate: Bearer error="invalid_token""#]
    );
}

#[test]
fn a_browser_denial_carries_vary_and_the_cors_headers_an_allowed_origin_reads() {
    let p = policy(&config("enforce"));
    // The web key on a path outside its endpoints, from its own origin: readable 403.
    let (status, headers, _) =
        answer(&p, &req("GET", "/other").auth("Bearer kw").origin("https://app.example"));
    assert_eq!(status, 403);
    assert_eq!(
        headers,
        [
            "content-type: application/json",
            "vary: Origin",
            "access-control-allow-origin: https://app.example",
            "access-control-expose-headers: x-total",
            "access-control-allow-credentials: true",
        ]
    );
    // From an origin it does not allow: the 403 varies on Origin but is not readable.
    let (status, headers, _) =
        answer(&p, &req("GET", "/api/a").auth("Bearer kw").origin("https://evil.example"));
    assert_eq!(
        (status, headers),
        (403, vec!["content-type: application/json".into(), "vary: Origin".into()])
    );
}

#[test]
fn an_allowed_preflight_is_a_204_echoing_the_method() {
    let p = policy(&config("report"));
    let (status, headers, body) =
        answer(&p, &req("OPTIONS", "/api/a").origin("https://app.example").preflight("GET"));
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(
        headers,
        [
            "access-control-allow-origin: https://app.example",
            "access-control-allow-methods: GET",
            "access-control-allow-headers: authorization, content-type",
            "access-control-max-age: 60",
            "vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            "access-control-allow-credentials: true",
        ]
    );
}

#[test]
fn an_allowed_key_is_forwarded_with_its_identity() {
    let p = policy(&config("enforce"));
    assert_eq!(
        answer(&p, &req("GET", "/x").auth("Bearer kb")),
        (0, vec!["forward key_id: backend".into()], String::new())
    );
    let (status, headers, _) =
        answer(&p, &req("GET", "/api/a").auth("Bearer kw").origin("https://app.example"));
    assert_eq!(status, 0);
    assert_eq!(headers[0], "forward key_id: web");
    assert_eq!(headers[1..3], ["vary: Origin", "access-control-allow-origin: https://app.example"]);
}

#[test]
fn report_mode_forwards_a_denial_without_identity_and_says_what_it_would_have_done() {
    let p = policy(&config("report"));
    assert_eq!(
        answer(&p, &req("GET", "/x").auth("Bearer nope")),
        (0, vec!["forward would_deny: denied_unknown".into()], String::new())
    );
    // A refused preflight is answered in report mode too.
    let (status, _, _) =
        answer(&p, &req("OPTIONS", "/api/a").origin("https://evil.example").preflight("GET"));
    assert_eq!(status, 403);
}
