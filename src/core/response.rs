//! What keygate sends for a verdict: a local reply (status, headers, body), or the request
//! forwarded with its identity and the CORS headers its response gets.
//!
//! The filter carries this out with host calls and `keygate explain` prints it, so the two
//! cannot disagree about a header. Building a response allocates nothing.

use crate::core::config::Mode;
use crate::core::decide::Request;
use crate::core::keytable::Key;
use crate::core::policy::Policy;
use crate::core::verdict::{Outcome, Reply, Verdict};

/// The request header that tells the upstream, in report mode, what enforce mode would
/// have sent instead of forwarding.
pub const WOULD_DENY_HEADER: &str = "x-keygate-would-deny";

pub type Header<'a> = (&'a [u8], &'a [u8]);

/// Up to [`Headers::CAPACITY`] headers, held inline.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    items: [Header<'a>; Headers::CAPACITY],
    len: usize,
}

impl<'a> Headers<'a> {
    /// The most any response needs: a denial's three plus the four of CORS.
    pub const CAPACITY: usize = 8;

    pub const fn new() -> Self {
        Headers { items: [(b"", b""); Self::CAPACITY], len: 0 }
    }

    fn push(&mut self, name: &'a [u8], value: &'a [u8]) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    fn extend(&mut self, more: &Headers<'a>) {
        for &(name, value) in more.as_slice() {
            self.push(name, value);
        }
    }

    pub fn as_slice(&self) -> &[Header<'a>] {
        self.items.get(..self.len).unwrap_or_default()
    }
}

impl Default for Headers<'_> {
    fn default() -> Self {
        Self::new()
    }
}

pub enum Response<'a> {
    /// keygate answers; the upstream never sees the request.
    Reply { status: u32, headers: Headers<'a>, body: &'static str },
    /// The request goes upstream.
    Forward {
        /// The key whose id (and owner) the upstream receives; `None` forwards no identity,
        /// and any client-sent identity header is removed.
        identity: Option<&'a Key>,
        /// Report mode: the outcome enforce mode would have answered with, for
        /// [`WOULD_DENY_HEADER`].
        would_deny: Option<&'static str>,
        /// Added to the upstream's response (see [`cors_headers`]); `vary` is merged with
        /// the upstream's own.
        cors: Headers<'a>,
    },
}

/// What keygate sends for `verdict` on `req`.
pub fn respond<'a>(policy: &'a Policy, verdict: &Verdict<'a>, req: &Request<'a>) -> Response<'a> {
    let origin = req.origin.value();
    let cors = cors_headers(policy, origin, verdict.allow_origin);
    if verdict.outcome == Outcome::PreflightAllowed {
        let method = req.access_control_request_method.value().unwrap_or_default();
        let headers = preflight_headers(policy, origin.unwrap_or_default(), method);
        return Response::Reply { status: 204, headers, body: "" };
    }
    let denial = verdict.outcome.reply();
    // Preflights are answered in both modes: they carry no key and change nothing.
    let enforce = policy.mode == Mode::Enforce || req.is_preflight();
    match denial {
        Some(reply) if enforce => Response::Reply {
            status: reply.status,
            headers: denial_headers(reply, &cors),
            body: reply.body,
        },
        _ => Response::Forward {
            identity: verdict.key.filter(|_| verdict.outcome == Outcome::Allowed),
            would_deny: denial.map(|_| verdict.outcome.name()),
            cors,
        },
    }
}

/// A denial's headers: `content-type`, `www-authenticate` on 401s, `retry-after` on 503s,
/// then `cors`.
pub fn denial_headers<'a>(reply: Reply, cors: &Headers<'a>) -> Headers<'a> {
    let mut h = Headers::new();
    h.push(b"content-type", b"application/json");
    if let Some(www) = reply.www_authenticate {
        h.push(b"www-authenticate", www.as_bytes());
    }
    if let Some(after) = reply.retry_after {
        h.push(b"retry-after", after.as_bytes());
    }
    h.extend(cors);
    h
}

/// The CORS headers of a response to a request from `origin` (none without one): `vary`
/// always, and when the origin is allowed, `access-control-allow-origin` with the
/// configured expose and credentials headers.
pub fn cors_headers<'a>(
    policy: &'a Policy,
    origin: Option<&'a [u8]>,
    allowed: bool,
) -> Headers<'a> {
    let mut h = Headers::new();
    let Some(origin) = origin else { return h };
    h.push(b"vary", b"Origin");
    if allowed {
        h.push(b"access-control-allow-origin", origin);
        if let Some(expose) = &policy.cors.expose_headers {
            h.push(b"access-control-expose-headers", expose.as_bytes());
        }
        if policy.cors.allow_credentials {
            h.push(b"access-control-allow-credentials", b"true");
        }
    }
    h
}

/// The 204 answering an allowed preflight.
fn preflight_headers<'a>(policy: &'a Policy, origin: &'a [u8], method: &'a [u8]) -> Headers<'a> {
    let cors = &policy.cors;
    let mut h = Headers::new();
    h.push(b"access-control-allow-origin", origin);
    h.push(b"access-control-allow-methods", method);
    h.push(b"access-control-allow-headers", cors.allow_headers.as_bytes());
    h.push(b"access-control-max-age", cors.max_age.as_bytes());
    h.push(b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
    if cors.allow_credentials {
        h.push(b"access-control-allow-credentials", b"true");
    }
    h
}
