//! The whole decision on arbitrary requests against a fixed policy: whatever it decides,
//! an allowed keyed request carried a well-formed header, a restricted key only passes on a
//! safe path, and an origin is only echoed when it is a real, allowed one.
#![no_main]
use keygate::core::cors::is_real_origin;
use keygate::core::decide::Request;
use keygate::core::keytable::Endpoints;
use keygate::core::path::matchable;
use keygate::core::policy::Policy;
use keygate::core::token::bearer_key;
use keygate::core::verdict::Outcome;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const CONFIG: &str = r#"{
  "keys": [
    { "id": "backend", "key": "backend-key" },
    { "id": "web", "key": "web-key", "cors": { "allowed_origins": ["https://app.example.com"] }, "resources": ["s1"] },
    { "id": "star", "key": "star-key", "cors": { "allowed_origins": ["*"] },
      "rules": [ { "methods": ["GET"], "paths": ["/open/*"] } ] }
  ],
  "cors_endpoints": [ { "methods": ["GET", "PATCH"], "paths": ["/api/stream/{id}"] } ],
  "public_endpoints": [ { "methods": ["GET"], "paths": ["/healthz"] } ]
}"#;

fn policy() -> Option<&'static Policy> {
    static POLICY: OnceLock<Option<Policy>> = OnceLock::new();
    POLICY.get_or_init(|| Policy::from_json(CONFIG.as_bytes()).ok().map(|c| c.policy)).as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(policy) = policy() else { return };
    // Fields separated by 0xff: method, path, authorization, origin, access-control-request-method.
    let mut parts = data.split(|&b| b == 0xff);
    let mut req = Request {
        method: parts.next().unwrap_or_default(),
        path: parts.next().unwrap_or_default(),
        ..Request::default()
    };
    for (i, part) in parts.enumerate().take(6) {
        match i % 3 {
            0 => req.authorization.push(part),
            1 => req.origin.push(part),
            _ => req.access_control_request_method.push(part),
        }
    }
    let v = policy.decide(&req, 0);
    if v.outcome == Outcome::Allowed {
        let header = req.authorization.value().unwrap_or_default();
        assert!(bearer_key(header).is_some());
        let key = v.key.map(|k| k.endpoints);
        if matches!(key, Some(Endpoints::Rules(_))) {
            assert!(matchable(req.path).is_some());
        }
    }
    if v.allow_origin {
        assert!(req.origin.value().is_some_and(is_real_origin));
    }
});
