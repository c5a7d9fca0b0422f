//! The whole decision for one request: parse → lookup → authorize → [`Verdict`].
//!
//! Pure: the filter hands in the headers it read and the clock, and turns the verdict
//! into host calls. Every rule lives in exactly one place below.

use crate::core::cors::is_real_origin;
use crate::core::keytable::{Endpoints, Key};
use crate::core::path;
use crate::core::policy::Policy;
use crate::core::rules::Access;
use crate::core::token;
use crate::core::verdict::{Outcome, Verdict};
use crate::core::window::Validity;

/// How many times a header appeared, and its value when it appeared once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Header<'a> {
    #[default]
    Absent,
    One(&'a [u8]),
    Many,
}

impl<'a> Header<'a> {
    pub fn push(&mut self, value: &'a [u8]) {
        *self = match self {
            Header::Absent => Header::One(value),
            _ => Header::Many,
        };
    }

    pub fn is_present(&self) -> bool {
        !matches!(self, Header::Absent)
    }

    /// The value when sent once; several values read as an empty one, which no rule,
    /// origin or method ever matches.
    pub fn value(&self) -> Option<&'a [u8]> {
        match *self {
            Header::Absent => None,
            Header::One(v) => Some(v),
            Header::Many => Some(b""),
        }
    }
}

/// What the decision reads from a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// `:path`, query string included.
    pub path: &'a [u8],
    pub authorization: Header<'a>,
    pub origin: Header<'a>,
    pub access_control_request_method: Header<'a>,
}

impl<'a> Request<'a> {
    pub fn is_preflight(&self) -> bool {
        self.method == b"OPTIONS"
            && self.origin.is_present()
            && self.access_control_request_method.is_present()
    }
}

impl Policy {
    /// Decides one request at time `now_ms` (Unix milliseconds).
    pub fn decide<'p>(&'p self, req: &Request, now_ms: i64) -> Verdict<'p> {
        let path = path::matchable(req.path);
        let origin = req.origin.value();
        if req.is_preflight() {
            let method = req.access_control_request_method.value().unwrap_or_default();
            return self.preflight(origin.unwrap_or_default(), method, path, now_ms);
        }
        let public = path.is_some_and(|p| self.public.allows(req.method, p));

        let header = match req.authorization {
            Header::Absent if public => {
                return verdict(Outcome::Public, None, origin.is_some_and(is_real_origin));
            }
            Header::Absent => {
                return self.unauthorized(Outcome::DeniedMissing, origin, false, now_ms)
            }
            Header::Many => {
                return self.unauthorized(Outcome::DeniedMalformed, origin, public, now_ms)
            }
            Header::One(value) => value,
        };
        let Some(presented) = token::bearer_key(header) else {
            return self.unauthorized(Outcome::DeniedMalformed, origin, public, now_ms);
        };
        let Some(key) = self.keys.lookup(presented) else {
            return self.unauthorized(Outcome::DeniedUnknown, origin, public, now_ms);
        };
        let refusal = if key.disabled {
            Some(Outcome::DeniedDisabled)
        } else {
            match key.window.at(now_ms) {
                Validity::Active => None,
                Validity::Expired => Some(Outcome::DeniedExpired),
                Validity::NotYetValid => Some(Outcome::DeniedNotYetValid),
            }
        };
        if let Some(outcome) = refusal {
            let mut v = self.unauthorized(outcome, origin, public, now_ms);
            v.key = Some(key);
            return v;
        }

        // A valid key on a public endpoint: its own origin and endpoint rules do not apply.
        if public {
            return verdict(Outcome::Allowed, Some(key), origin.is_some_and(is_real_origin));
        }
        self.authorize(key, req.method, path, origin)
    }

    /// Origin, endpoint and resource rules for an authenticated key.
    fn authorize<'p>(
        &'p self,
        key: &'p Key,
        method: &[u8],
        path: Option<&[u8]>,
        origin: Option<&[u8]>,
    ) -> Verdict<'p> {
        let from_allowed_origin = match (origin, key.origins.as_deref()) {
            (None, _) => false,
            (Some(_), None) => {
                return verdict(Outcome::DeniedBackendKeyFromBrowser, Some(key), false)
            }
            (Some(o), Some(allowed)) if allowed.allows(o) => true,
            (Some(_), Some(_)) => return verdict(Outcome::DeniedOrigin, Some(key), false),
        };
        let access = match key.endpoints {
            Endpoints::All => Access::Allowed,
            Endpoints::Rules(n) => match (path, self.rule_set(n)) {
                (Some(p), Some(rules)) => rules.check(method, p, key.resources.as_deref()),
                _ => Access::EndpointDenied,
            },
            // Static keys never carry their own rules (the compiler indexes them).
            Endpoints::Own => Access::EndpointDenied,
        };
        let outcome = match access {
            Access::Allowed => Outcome::Allowed,
            Access::EndpointDenied => Outcome::DeniedEndpoint,
            Access::ResourceDenied => Outcome::DeniedResource,
        };
        verdict(outcome, Some(key), from_allowed_origin)
    }

    /// A 401, readable by the page when a public endpoint or any active CORS key
    /// allows its origin.
    fn unauthorized(
        &self,
        outcome: Outcome,
        origin: Option<&[u8]>,
        public: bool,
        now_ms: i64,
    ) -> Verdict<'_> {
        let readable = origin.is_some_and(|o| {
            is_real_origin(o)
                && (public
                    || self.cors_index.grants(o).any(|g| g.window.at(now_ms) == Validity::Active))
        });
        verdict(outcome, None, readable)
    }

    /// Preflights carry no key: allowed when a public endpoint, or some active CORS key
    /// for this origin, allows the requested method on the path.
    fn preflight(
        &self,
        origin: &[u8],
        method: &[u8],
        path: Option<&[u8]>,
        now_ms: i64,
    ) -> Verdict<'_> {
        let allowed = is_real_origin(origin)
            && is_method(method)
            && path.is_some_and(|p| {
                self.public.allows(method, p)
                    || self.cors_index.grants(origin).any(|g| {
                        g.window.at(now_ms) == Validity::Active
                            && match g.rules {
                                None => true,
                                Some(n) => self.rule_set(n).is_some_and(|r| r.allows(method, p)),
                            }
                    })
            });
        let outcome = if allowed { Outcome::PreflightAllowed } else { Outcome::PreflightDenied };
        verdict(outcome, None, allowed)
    }
}

/// An HTTP method token: it is echoed in `access-control-allow-methods`.
fn is_method(method: &[u8]) -> bool {
    !method.is_empty()
        && method.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn verdict(outcome: Outcome, key: Option<&Key>, allow_origin: bool) -> Verdict<'_> {
    Verdict { outcome, key, allow_origin }
}
