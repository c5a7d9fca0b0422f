//! The glue: proxy-wasm callbacks in, host calls out. All decisions are made by
//! `Policy::decide`; this file only reads the request and carries out the verdict.

use crate::config::Mode;
use crate::headers::{self, WOULD_DENY_HEADER};
use crate::host::{self, Map};
use crate::policy::Policy;
use crate::verdict::{Outcome, Verdict};
use log::{debug, error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use std::sync::OnceLock;

proxy_wasm::main! {{
    // No host calls here: `_initialize` runs before the host allows any.
    let _ = log::set_logger(&host::HostLogger);
    proxy_wasm::set_root_context(|_| Box::new(Root { policy: None }));
}}

/// Counter ids, defined once per VM: `keygate.<outcome>` for what was done, and
/// `keygate.report.<outcome>` for each denial report mode let through.
struct Metrics {
    done: [Option<u32>; Outcome::ALL.len()],
    reported: [Option<u32>; Outcome::ALL.len()],
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        done: Outcome::ALL.map(|o| host::define_counter(&format!("keygate.{}", o.name()))),
        reported: Outcome::ALL.map(|o| {
            let reportable = o.reply().is_some() && o != Outcome::PreflightDenied;
            reportable
                .then(|| host::define_counter(&format!("keygate.report.{}", o.name())))
                .flatten()
        }),
    })
}

/// Counts the outcome as done, or as reported when report mode let a denial through.
fn count(outcome: Outcome, reported: bool) {
    let m = metrics();
    let ids = if reported { &m.reported } else { &m.done };
    if let Some(Some(id)) = ids.get(outcome as usize) {
        host::increment(*id);
    }
}

struct Root {
    policy: Option<Rc<Policy>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        log::set_max_level(host::log_level());
        metrics();
        let started = host::now_ms();
        let Some(json) = host::plugin_configuration(size) else {
            error!("config: no plugin configuration");
            return false;
        };
        match Policy::from_json(&json) {
            Ok(compiled) => {
                for warning in &compiled.warnings {
                    warn!("{warning}");
                }
                let took = host::now_ms().zip(started).map_or(0, |(end, start)| end - start);
                info!(
                    "configured {} keys in {} ms ({:?} mode)",
                    compiled.policy.keys.len(),
                    took,
                    compiled.policy.mode
                );
                self.policy = Some(Rc::new(compiled.policy));
                true
            }
            Err(e) => {
                // The previous policy, if any, keeps serving: Envoy rejects this update.
                error!("invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { policy: self.policy.clone(), response: ResponseCors::None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the response of a forwarded browser request needs.
enum ResponseCors {
    /// No `Origin`, or keygate answered locally and already set every header.
    None,
    /// `vary: Origin` only.
    Vary,
    /// `vary: Origin` and `access-control-allow-origin: <origin>`.
    Allow(Vec<u8>),
}

struct Stream {
    policy: Option<Rc<Policy>>,
    response: ResponseCors,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            // Unreachable with Envoy (no filter without a configuration); fail closed.
            reply(401, Outcome::DeniedMissing.reply().map_or("", |r| r.body), &[]);
            return Action::Pause;
        };
        let map = host::request_header_map().unwrap_or_default();
        let scan = headers::scan(&map, &policy.forward);
        let req = &scan.request;
        let now = if policy.needs_clock { host::now_ms().unwrap_or(i64::MAX) } else { 0 };
        let verdict = policy.decide(req, now);
        let origin = req.origin.value();
        // Preflights are answered in both modes: they carry no key and change nothing.
        let enforce = policy.mode == Mode::Enforce || req.is_preflight();
        let denial = verdict.outcome.reply();
        count(verdict.outcome, denial.is_some() && !enforce);

        if let Some(denial) = denial {
            debug!(
                "{} key={}{}",
                verdict.outcome.name(),
                verdict.key.map_or("-", |k| &k.id),
                if enforce { "" } else { " (report mode: let through)" }
            );
            if enforce {
                let mut extra: Vec<(&[u8], &[u8])> = Vec::with_capacity(6);
                if let Some(www) = denial.www_authenticate {
                    extra.push((b"www-authenticate", www.as_bytes()));
                }
                cors_reply_headers(&policy, &verdict, origin, &mut extra);
                reply(denial.status, denial.body, &extra);
                return Action::Pause;
            }
        } else if verdict.outcome == Outcome::PreflightAllowed {
            preflight_reply(
                &policy,
                origin.unwrap_or_default(),
                req.access_control_request_method.value(),
            );
            return Action::Pause;
        }

        forward(&policy, &scan, &verdict);
        self.response = match origin {
            None => ResponseCors::None,
            Some(o) if verdict.allow_origin => ResponseCors::Allow(o.to_vec()),
            Some(_) => ResponseCors::Vary,
        };
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(policy) = &self.policy else {
            return Action::Continue;
        };
        match &self.response {
            ResponseCors::None => {}
            ResponseCors::Vary => add_vary_origin(),
            ResponseCors::Allow(origin) => {
                add_vary_origin();
                host::set_header(Map::Response, "access-control-allow-origin", origin);
                if let Some(expose) = &policy.cors.expose_headers {
                    host::set_header(
                        Map::Response,
                        "access-control-expose-headers",
                        expose.as_bytes(),
                    );
                }
                if policy.cors.allow_credentials {
                    host::set_header(Map::Response, "access-control-allow-credentials", b"true");
                }
            }
        }
        Action::Continue
    }
}

/// Sets the upstream request's identity headers; client-sent copies never survive.
fn forward(policy: &Policy, scan: &headers::Scan, verdict: &Verdict) {
    let fwd = &policy.forward;
    let identity = verdict.key.filter(|_| verdict.outcome == Outcome::Allowed);
    match identity {
        Some(key) => {
            host::set_header(Map::Request, &fwd.key_id_header, key.id.as_bytes());
            if fwd.filter_state {
                // Filter state `wasm.keygate.key_id` / `wasm.keygate.owner`, for access logs.
                host::set_property(b"keygate.key_id", key.id.as_bytes());
                if let Some(owner) = &key.owner {
                    host::set_property(b"keygate.owner", owner.as_bytes());
                }
            }
            match &key.owner {
                Some(owner) => {
                    host::set_header(Map::Request, &fwd.owner_header, owner.as_bytes());
                }
                None if scan.spoofed_owner => {
                    host::remove_header(Map::Request, &fwd.owner_header);
                }
                None => {}
            }
        }
        None => {
            if scan.spoofed_key_id {
                host::remove_header(Map::Request, &fwd.key_id_header);
            }
            if scan.spoofed_owner {
                host::remove_header(Map::Request, &fwd.owner_header);
            }
        }
    }
    if verdict.outcome.reply().is_some() {
        // Only reached in report mode: say what enforce mode would have done.
        host::set_header(Map::Request, WOULD_DENY_HEADER, verdict.outcome.name().as_bytes());
    } else if scan.spoofed_would_deny {
        host::remove_header(Map::Request, WOULD_DENY_HEADER);
    }
    if fwd.strip_authorization && scan.request.authorization.is_present() {
        host::remove_header(Map::Request, "authorization");
    }
}

/// `vary` and, when the origin is allowed, the CORS headers of a local reply.
fn cors_reply_headers<'a>(
    policy: &'a Policy,
    verdict: &Verdict,
    origin: Option<&'a [u8]>,
    out: &mut Vec<(&'a [u8], &'a [u8])>,
) {
    let Some(origin) = origin else { return };
    out.push((b"vary", b"Origin"));
    if verdict.allow_origin {
        out.push((b"access-control-allow-origin", origin));
        if let Some(expose) = &policy.cors.expose_headers {
            out.push((b"access-control-expose-headers", expose.as_bytes()));
        }
        if policy.cors.allow_credentials {
            out.push((b"access-control-allow-credentials", b"true"));
        }
    }
}

fn preflight_reply(policy: &Policy, origin: &[u8], method: Option<&[u8]>) {
    let cors = &policy.cors;
    let mut h: Vec<(&[u8], &[u8])> = vec![
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", method.unwrap_or_default()),
        (b"access-control-allow-headers", cors.allow_headers.as_bytes()),
        (b"access-control-max-age", cors.max_age.as_bytes()),
        (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    ];
    if cors.allow_credentials {
        h.push((b"access-control-allow-credentials", b"true"));
    }
    let map = headers::serialize(&h);
    host::send_response(204, &map, b"");
}

fn reply(status: u32, body: &str, extra: &[(&[u8], &[u8])]) {
    let mut h: Vec<(&[u8], &[u8])> = Vec::with_capacity(extra.len() + 1);
    h.push((b"content-type", b"application/json"));
    h.extend_from_slice(extra);
    host::send_response(status, &headers::serialize(&h), body.as_bytes());
}

/// Adds `Origin` to the upstream's `vary`, keeping what it already varies on.
fn add_vary_origin() {
    match host::response_header("vary") {
        Some(v) if !v.is_empty() => {
            let covered = v.split(|&c| c == b',').any(|t| {
                let t = t.trim_ascii();
                t == b"*" || t.eq_ignore_ascii_case(b"origin")
            });
            if !covered {
                let merged = [&v[..], b", Origin"].concat();
                host::set_header(Map::Response, "vary", &merged);
            }
        }
        _ => {
            host::add_header(Map::Response, "vary", b"Origin");
        }
    }
}
