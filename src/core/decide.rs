//! The whole decision for one request: parse → lookup → authorize → [`Verdict`]; with a
//! key service, lookup may first need an answer ([`Decision::Ask`]).
//!
//! Pure: the filter hands in the headers it read and the clock, and turns the verdict
//! into host calls. Every rule lives in exactly one place below.

use crate::core::cors::is_real_origin;
use crate::core::entry::Entry;
use crate::core::keytable::{sha256, Digest, Endpoints, Key};
use crate::core::path;
use crate::core::policy::Policy;
use crate::core::remote::cache::{Cached, RemoteCache};
use crate::core::rules::Access;
use crate::core::rules::RuleSet;
use crate::core::token;
use crate::core::verdict::{Outcome, RemoteUse, Verdict};
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

/// What the decision reads of the key service's answers, when the policy has one.
#[derive(Clone, Copy)]
pub struct Remote<'c> {
    pub cache: &'c RemoteCache,
    /// Lookups this request already waited for and that failed: decide without them
    /// instead of asking again.
    pub failed: Failed,
}

/// Which lookups failed for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failed {
    /// The key's: serve a stale answer, or the 503.
    pub key: bool,
    /// The origin's: remote CORS keys grant nothing (a preflight gets the 503, a 401 or 503
    /// stays unreadable).
    pub origin: bool,
}

impl Failed {
    pub const NONE: Failed = Failed { key: false, origin: false };
    pub const BOTH: Failed = Failed { key: true, origin: true };
    pub const KEY: Failed = Failed { key: true, origin: false };
    pub const ORIGIN: Failed = Failed { key: false, origin: true };

    /// What failed in either.
    pub fn and(self, other: Failed) -> Failed {
        Failed { key: self.key || other.key, origin: self.origin || other.origin }
    }
}

/// The decision, or what must be asked first.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    Done(Verdict<'a>),
    /// Pause the request, ask the key service, then decide again.
    Ask(Ask),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// `keys/{digest}`; the answer is cached under `tag`.
    Key { tag: u128, digest: Digest },
    /// `origins/{the request's Origin}`.
    Origin,
}

/// A key found, and the rule set its `Endpoints::Own` refers to.
struct Found<'a> {
    key: &'a Key,
    own_rules: Option<&'a RuleSet>,
    remote: RemoteUse,
}

/// What a decision step yields: a result, or a question for the key service.
type Step<'a, T> = Result<T, Ask>;

impl Policy {
    /// Decides one request at time `now_ms` (Unix milliseconds), with the static table only.
    pub fn decide<'p>(&'p self, req: &Request, now_ms: i64) -> Verdict<'p> {
        match self.decide_with(req, now_ms, None) {
            Decision::Done(v) => v,
            // Unreachable without a cache; fail closed all the same.
            Decision::Ask(_) => verdict(Outcome::Unavailable, None, false),
        }
    }

    /// Decides one request, asking the key service (through `remote`) for what the static
    /// table does not hold.
    pub fn decide_with<'a>(
        &'a self,
        req: &Request,
        now_ms: i64,
        remote: Option<Remote<'a>>,
    ) -> Decision<'a> {
        match self.decide_step(req, now_ms, remote) {
            Ok(v) => Decision::Done(v),
            Err(ask) => Decision::Ask(ask),
        }
    }

    fn decide_step<'a>(
        &'a self,
        req: &Request,
        now_ms: i64,
        remote: Option<Remote<'a>>,
    ) -> Step<'a, Verdict<'a>> {
        let path = path::matchable(req.path);
        let origin = req.origin.value();
        if req.is_preflight() {
            let method = req.access_control_request_method.value().unwrap_or_default();
            return self.preflight(origin.unwrap_or_default(), method, path, now_ms, remote);
        }
        let public = path.is_some_and(|p| self.public.allows(req.method, p));

        let header = match req.authorization {
            Header::Absent if public => {
                return Ok(verdict(Outcome::Public, None, origin.is_some_and(is_real_origin)));
            }
            Header::Absent => {
                return self.unauthorized(Outcome::DeniedMissing, origin, false, now_ms, remote)
            }
            Header::Many => {
                return self.unauthorized(Outcome::DeniedMalformed, origin, public, now_ms, remote)
            }
            Header::One(value) => value,
        };
        let Some(presented) = token::bearer_key(header) else {
            return self.unauthorized(Outcome::DeniedMalformed, origin, public, now_ms, remote);
        };
        // Before the table, the cache or the key service: a flood of made-up keys in keygate's
        // format costs one CRC each, never a lookup.
        if self.key_format.refuses(presented) {
            return self.unauthorized(Outcome::DeniedChecksum, origin, public, now_ms, remote);
        }
        let found = match self.keys.lookup(presented) {
            Some(key) => Found { key, own_rules: None, remote: RemoteUse::None },
            None => match remote {
                None => {
                    return self.unauthorized(Outcome::DeniedUnknown, origin, public, now_ms, None)
                }
                Some(r) => match self.remote_key(r, presented, now_ms)? {
                    Ok(found) => found,
                    Err(outcome) => {
                        let mut v = self.unauthorized(outcome, origin, public, now_ms, remote)?;
                        if outcome == Outcome::DeniedUnknown {
                            v.remote = RemoteUse::NegativeHit;
                        }
                        return Ok(v);
                    }
                },
            },
        };
        let key = found.key;
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
            let mut v = self.unauthorized(outcome, origin, public, now_ms, remote)?;
            v.key = Some(key);
            v.remote = found.remote;
            return Ok(v);
        }

        // A valid key on a public endpoint: its own origin and endpoint rules do not apply.
        let mut v = if public {
            verdict(Outcome::Allowed, Some(key), origin.is_some_and(is_real_origin))
        } else {
            self.authorize(&found, req.method, path, origin)
        };
        v.remote = found.remote;
        Ok(v)
    }

    /// The key service's answer for a key the table does not hold: the key (fresh, or
    /// stale after a failed lookup), `DeniedUnknown` for a fresh 404, or `Unavailable` when
    /// the lookup failed with nothing stale to serve.
    fn remote_key<'a>(
        &'a self,
        remote: Remote<'a>,
        presented: &[u8],
        now_ms: i64,
    ) -> Step<'a, Result<Found<'a>, Outcome>> {
        let found = |entry: &'a Entry, used| Found {
            key: &entry.key,
            own_rules: entry.own_rules.as_deref(),
            remote: used,
        };
        let tag = remote.cache.tag(presented);
        match remote.cache.get(tag, now_ms) {
            Cached::Fresh(entry) => Ok(Ok(found(entry, RemoteUse::Hit))),
            Cached::Absent => Ok(Err(Outcome::DeniedUnknown)),
            Cached::Miss if remote.failed.key => Ok(remote
                .cache
                .stale(tag, now_ms)
                .map(|e| found(e, RemoteUse::Stale))
                .ok_or(Outcome::Unavailable)),
            Cached::Miss => Err(Ask::Key { tag, digest: sha256(presented) }),
        }
    }

    /// Origin, endpoint and resource rules for an authenticated key.
    fn authorize<'a>(
        &'a self,
        found: &Found<'a>,
        method: &[u8],
        path: Option<&[u8]>,
        origin: Option<&[u8]>,
    ) -> Verdict<'a> {
        let key = found.key;
        let from_allowed_origin = match (origin, key.origins.as_deref()) {
            (None, _) => false,
            (Some(_), None) => {
                return verdict(Outcome::DeniedBackendKeyFromBrowser, Some(key), false)
            }
            (Some(o), Some(allowed)) if allowed.allows(o) => true,
            (Some(_), Some(_)) => return verdict(Outcome::DeniedOrigin, Some(key), false),
        };
        let rules = match key.endpoints {
            Endpoints::All => None,
            Endpoints::Rules(n) => Some(self.rule_set(n)),
            Endpoints::Own => Some(found.own_rules),
        };
        let access = match (rules, path) {
            (None, _) => Access::Allowed,
            (Some(Some(rules)), Some(p)) => rules.check(method, p, key.resources.as_deref()),
            _ => Access::EndpointDenied,
        };
        let outcome = match access {
            Access::Allowed => Outcome::Allowed,
            Access::EndpointDenied => Outcome::DeniedEndpoint,
            Access::ResourceDenied => Outcome::DeniedResource,
        };
        verdict(outcome, Some(key), from_allowed_origin)
    }

    /// A 401 (or the key service's 503), readable by the page when a public endpoint or
    /// any active CORS key allows its origin; remote CORS keys count once their origin's
    /// answer is known.
    fn unauthorized<'a>(
        &'a self,
        outcome: Outcome,
        origin: Option<&[u8]>,
        public: bool,
        now_ms: i64,
        remote: Option<Remote<'a>>,
    ) -> Step<'a, Verdict<'a>> {
        let readable = match origin {
            Some(o) if is_real_origin(o) => {
                public
                    || self.cors_index.grants(o).any(|g| g.window.at(now_ms) == Validity::Active)
                    || self.remote_grants(o, now_ms, remote, |_| true)?
            }
            _ => false,
        };
        Ok(verdict(outcome, None, readable))
    }

    /// Whether a remote CORS key active now for `origin` passes `allows`. Asks for the
    /// origin's answer when it is not cached, unless its lookup failed (then remote keys
    /// grant nothing).
    fn remote_grants<'a>(
        &'a self,
        origin: &[u8],
        now_ms: i64,
        remote: Option<Remote<'a>>,
        allows: impl Fn(&Entry) -> bool,
    ) -> Step<'a, bool> {
        let Some(r) = remote else { return Ok(false) };
        match r.cache.origin(origin, now_ms) {
            Some(entries) => Ok(entries.iter().any(|e| {
                !e.key.disabled
                    && e.key.window.at(now_ms) == Validity::Active
                    && e.key.origins.as_deref().is_some_and(|o| o.allows(origin))
                    && allows(e)
            })),
            None if r.failed.origin => Ok(false),
            None => Err(Ask::Origin),
        }
    }

    /// Preflights carry no key: allowed when a public endpoint, or some active CORS key
    /// for this origin, allows the requested method on the path.
    fn preflight<'a>(
        &'a self,
        origin: &[u8],
        method: &[u8],
        path: Option<&[u8]>,
        now_ms: i64,
        remote: Option<Remote<'a>>,
    ) -> Step<'a, Verdict<'a>> {
        let (Some(p), true) = (path, is_real_origin(origin) && token::is_http_token(method)) else {
            return Ok(verdict(Outcome::PreflightDenied, None, false));
        };
        let static_allowed = self.public.allows(method, p)
            || self.cors_index.grants(origin).any(|g| {
                g.window.at(now_ms) == Validity::Active
                    && match g.rules {
                        None => true,
                        Some(n) => self.rule_set(n).is_some_and(|r| r.allows(method, p)),
                    }
            });
        let allowed = static_allowed
            || self.remote_grants(origin, now_ms, remote, |e| {
                let rules = match e.key.endpoints {
                    Endpoints::All => return true,
                    Endpoints::Rules(n) => self.rule_set(n),
                    Endpoints::Own => e.own_rules.as_deref(),
                };
                rules.is_some_and(|r| r.allows(method, p))
            })?;
        if !allowed && remote.is_some_and(|r| r.failed.origin) {
            // The origin's keys could not be learnt: say so instead of a 403.
            return Ok(verdict(Outcome::Unavailable, None, false));
        }
        let outcome = if allowed { Outcome::PreflightAllowed } else { Outcome::PreflightDenied };
        Ok(verdict(outcome, None, allowed))
    }
}

fn verdict(outcome: Outcome, key: Option<&Key>, allow_origin: bool) -> Verdict<'_> {
    Verdict { outcome, key, allow_origin, remote: RemoteUse::None }
}
