//! What the filter would do with one request, computed by the same core: the lines
//! `keygate explain` prints. The status, headers and body are the core's one response for a
//! verdict (`keygate::core::response::respond`), the one the filter sends.

use keygate::core::decide::{Ask, Decision, Failed, Remote, Request};
use keygate::core::limits::parse_header;
use keygate::core::policy::Policy;
use keygate::core::remote::cache::RemoteCache;
use keygate::core::remote::protocol;
use keygate::core::response::{respond, Response, WOULD_DENY_HEADER};

/// One request, as `keygate explain` was told it.
pub struct Question<'a> {
    pub method: &'a str,
    /// With its query string if any.
    pub path: &'a str,
    pub origin: Option<&'a str>,
    /// `Access-Control-Request-Method`, for a preflight.
    pub request_method: Option<&'a str>,
    /// The `Authorization` header's value, when the request has one.
    pub authorization: Option<&'a [u8]>,
    /// When the request arrives, in Unix milliseconds.
    pub now_ms: i64,
}

/// `name: value` lines: `outcome`, `key_id`, `status` (`upstream` when the request would
/// be forwarded), then the reply's `body` and headers; or, forwarded, the request headers
/// keygate would add (`forward <header>: value`: the identity, and in report mode
/// `x-keygate-would-deny`) and the CORS headers it would add to the upstream's response.
pub fn explain(policy: &Policy, q: &Question) -> Vec<String> {
    let mut req =
        Request { method: q.method.as_bytes(), path: q.path.as_bytes(), ..Request::default() };
    if let Some(authorization) = q.authorization {
        req.authorization.push(authorization);
    }
    if let Some(o) = q.origin {
        req.origin.push(o.as_bytes());
    }
    if let Some(m) = q.request_method {
        req.access_control_request_method.push(m.as_bytes());
    }

    let mut lines = Vec::new();
    // With a key service, an empty cache shows where the filter would ask instead.
    let cache = policy.remote.as_ref().and_then(|s| RemoteCache::new(s.cache));
    let remote = cache.as_ref().map(|cache| Remote { cache, failed: Failed::NONE });
    let verdict = match policy.decide_with(&req, q.now_ms, remote) {
        Decision::Done(verdict) => verdict,
        Decision::Ask(ask) => {
            let service = policy.remote.as_ref().map_or("", |s| &s.path_prefix);
            let what = match ask {
                Ask::Key { digest, .. } => protocol::key_path(service, &digest),
                Ask::Origin => {
                    protocol::origin_path(service, q.origin.unwrap_or_default().as_bytes())
                }
            };
            lines.push("outcome: remote lookup".into());
            lines.push(format!("asks: GET {what}"));
            lines.push("then: decided like a static key with the key service's answer; 503 if it cannot be had".into());
            return lines;
        }
    };
    lines.push(format!("outcome: {}", verdict.outcome.name()));
    lines.push(format!("key_id: {}", verdict.key.map_or("-", |k| &k.id)));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match respond(policy, &verdict, &req) {
        Response::Reply { status, headers, body } => {
            lines.push(format!("status: {status}"));
            if !body.is_empty() {
                lines.push(format!("body: {body}"));
            }
            for (name, value) in headers.list() {
                lines.push(format!("{}: {}", text(name), text(value)));
            }
        }
        Response::Forward { identity, would_deny, cors } => {
            lines.push("status: upstream".into());
            if let Some(key) = identity {
                lines.push(format!("forward {}: {}", policy.forward.key_id_header, key.id));
                if let Some(owner) = &key.owner {
                    lines.push(format!("forward {}: {owner}", policy.forward.owner_header));
                }
                if let Some(limits) = &key.limits {
                    lines.push(format!("forward {}: {limits}", policy.forward.limits_header));
                    lines.push(format!("limits: {}", limits_line(limits, key.owner.is_some())));
                }
            }
            if let Some(outcome) = would_deny {
                lines.push(format!("forward {WOULD_DENY_HEADER}: {outcome}"));
            }
            // Added to the upstream's response.
            for (name, value) in cors.list() {
                lines.push(format!("{}: {}", text(name), text(value)));
            }
        }
    }
    lines
}

/// The limits a request of this key is counted against, in words: the key's own, and its
/// owner's, which the key service holds.
fn limits_line(value: &str, has_owner: bool) -> String {
    let own = match parse_header(value) {
        Ok(list) if list.is_empty() => "none of its own".to_string(),
        Ok(list) => list
            .iter()
            .map(|l| format!("{} ({} per {})", l.label(), l.requests, l.per.name()))
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => "unreadable".to_string(),
    };
    if has_owner {
        format!("{own}; and its owner's, held by the key service (keygate owners show)")
    } else {
        own
    }
}
