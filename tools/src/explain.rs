//! What the filter would do with one request, computed by the same core: the lines
//! `keygate explain` prints.

use keygate::core::config::Mode;
use keygate::core::decide::{Ask, Decision, Failed, Remote, Request};
use keygate::core::policy::Policy;
use keygate::core::remote::cache::RemoteCache;
use keygate::core::remote::protocol;
use keygate::core::verdict::Outcome;

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
/// be forwarded), then `body` and the response headers keygate would set, or the identity
/// headers it would forward (`forward <header>: value`).
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
    let enforce = policy.mode == Mode::Enforce || req.is_preflight();
    lines.push(format!("outcome: {}", verdict.outcome.name()));
    lines.push(format!("key_id: {}", verdict.key.map_or("-", |k| &k.id)));
    let mut headers: Vec<(String, String)> = Vec::new();
    match verdict.outcome.reply() {
        Some(reply) if enforce => {
            lines.push(format!("status: {}", reply.status));
            lines.push(format!("body: {}", reply.body));
            headers.push(("content-type".into(), "application/json".into()));
            if let Some(www) = reply.www_authenticate {
                headers.push(("www-authenticate".into(), www.into()));
            }
            if let Some(after) = reply.retry_after {
                headers.push(("retry-after".into(), after.into()));
            }
        }
        _ if verdict.outcome == Outcome::PreflightAllowed => {
            lines.push("status: 204".into());
            headers.push((
                "access-control-allow-methods".into(),
                q.request_method.unwrap_or_default().into(),
            ));
            headers.push((
                "access-control-allow-headers".into(),
                policy.cors.allow_headers.to_string(),
            ));
            headers.push(("access-control-max-age".into(), policy.cors.max_age.to_string()));
        }
        denial => {
            lines.push("status: upstream".into());
            if let (Some(key), Outcome::Allowed) = (verdict.key, verdict.outcome) {
                headers.push((
                    format!("forward {}", policy.forward.key_id_header),
                    key.id.to_string(),
                ));
                if let Some(owner) = &key.owner {
                    headers.push((
                        format!("forward {}", policy.forward.owner_header),
                        owner.to_string(),
                    ));
                }
            }
            if denial.is_some() {
                headers
                    .push(("forward x-keygate-would-deny".into(), verdict.outcome.name().into()));
            }
        }
    }
    if let (Some(origin), true) = (q.origin, verdict.allow_origin) {
        headers.push(("access-control-allow-origin".into(), origin.into()));
    }
    lines.extend(headers.into_iter().map(|(name, value)| format!("{name}: {value}")));
    lines
}
