//! What keygate sends for a verdict: a local reply (status, headers, body), or the request
//! forwarded with its identity and the CORS headers its response gets.
//!
//! The filter carries this out with host calls and `keygate explain` prints it, so the two
//! cannot disagree about a header. Building a response allocates nothing.

use crate::core::config::Mode;
use crate::core::decide::Request;
use crate::core::keytable::Key;
use crate::core::policy::{CorsHeaders, Policy};
use crate::core::verdict::{Outcome, Reply, Verdict};

/// The request header that tells the upstream, in report mode, what enforce mode would
/// have sent instead of forwarding.
pub const WOULD_DENY_HEADER: &str = "x-keygate-would-deny";

pub type Header<'a> = (&'a [u8], &'a [u8]);

/// The headers of a response, described rather than listed: building a response is a few
/// words, and the list is made only by whoever needs it ([`Headers::each`], [`Headers::list`]).
/// The filter's most frequent reply, a denial without `Origin`, never needs it: its headers
/// depend on the outcome alone and are serialized once.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    kind: Kind<'a>,
    /// The request's origin and whether it may read the response; `None` without `Origin`.
    cors: Option<(&'a [u8], bool)>,
    settings: Option<&'a CorsHeaders>,
}

#[derive(Clone, Copy)]
enum Kind<'a> {
    /// `content-type`, `www-authenticate` on 401s, `retry-after` on 503s, then CORS.
    Denial(Reply),
    /// The 204 answering an allowed preflight for this method.
    Preflight(&'a [u8]),
    /// Added to a forwarded request's response: CORS only.
    Forwarded,
}

impl<'a> Headers<'a> {
    /// A denial's headers for a request without `Origin`.
    pub const fn denial(reply: Reply) -> Headers<'a> {
        Headers { kind: Kind::Denial(reply), cors: None, settings: None }
    }

    /// The CORS headers a forwarded request's response gets: `vary` when the request has an
    /// `Origin`, and when the origin is allowed, `access-control-allow-origin` with the
    /// configured expose and credentials headers.
    pub fn cors(policy: &'a Policy, origin: Option<&'a [u8]>, allowed: bool) -> Headers<'a> {
        Headers {
            kind: Kind::Forwarded,
            cors: origin.map(|o| (o, allowed)),
            settings: Some(&policy.cors),
        }
    }

    /// Calls `f` with each header, in order.
    pub fn each(&self, mut f: impl FnMut(&'a [u8], &'a [u8])) {
        match self.kind {
            Kind::Denial(reply) => {
                f(b"content-type", b"application/json");
                if let Some(www) = reply.www_authenticate {
                    f(b"www-authenticate", www.as_bytes());
                }
                if let Some(after) = reply.retry_after {
                    f(b"retry-after", after.as_bytes());
                }
            }
            Kind::Preflight(method) => {
                let (Some((origin, _)), Some(c)) = (self.cors, self.settings) else { return };
                f(b"access-control-allow-origin", origin);
                f(b"access-control-allow-methods", method);
                f(b"access-control-allow-headers", c.allow_headers.as_bytes());
                f(b"access-control-max-age", c.max_age.as_bytes());
                f(
                    b"vary",
                    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                );
                if c.allow_credentials {
                    f(b"access-control-allow-credentials", b"true");
                }
                return;
            }
            Kind::Forwarded => {}
        }
        let Some((origin, allowed)) = self.cors else { return };
        f(b"vary", b"Origin");
        if let (true, Some(c)) = (allowed, self.settings) {
            f(b"access-control-allow-origin", origin);
            if let Some(expose) = &c.expose_headers {
                f(b"access-control-expose-headers", expose.as_bytes());
            }
            if c.allow_credentials {
                f(b"access-control-allow-credentials", b"true");
            }
        }
    }

    /// The headers, in order.
    pub fn list(&self) -> Vec<Header<'a>> {
        let mut all = Vec::with_capacity(8);
        self.each(|name, value| all.push((name, value)));
        all
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
        /// Added to the upstream's response (see [`Headers::cors`]); `vary` is merged with
        /// the upstream's own.
        cors: Headers<'a>,
    },
}

/// What keygate sends for `verdict` on `req`.
pub fn respond<'a>(policy: &'a Policy, verdict: &Verdict<'a>, req: &Request<'a>) -> Response<'a> {
    let mut headers = Headers::cors(policy, req.origin.value(), verdict.allow_origin);
    if verdict.outcome == Outcome::PreflightAllowed {
        let method = req.access_control_request_method.value().unwrap_or_default();
        headers.kind = Kind::Preflight(method);
        // Answered for any origin a preflight allows: it is the one the response names.
        headers.cors = Some((req.origin.value().unwrap_or_default(), true));
        return Response::Reply { status: 204, headers, body: "" };
    }
    let denial = verdict.outcome.reply();
    // Preflights are answered in both modes: they carry no key and change nothing.
    let enforce = policy.mode == Mode::Enforce || req.is_preflight();
    match denial {
        Some(reply) if enforce => {
            headers.kind = Kind::Denial(reply);
            Response::Reply { status: reply.status, headers, body: reply.body }
        }
        _ => Response::Forward {
            identity: verdict.key.filter(|_| verdict.outcome == Outcome::Allowed),
            would_deny: denial.map(|_| verdict.outcome.name()),
            cors: headers,
        },
    }
}
