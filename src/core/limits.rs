//! Request limits: compiled from a key's (or an owner's) `limits`, and the one-line form
//! the filter forwards to Envoy's rate-limit filter.
//!
//! The filter never counts. It forwards a limited key's limits in one request header
//! (`forward.limits_header`); Envoy's rate-limit filter turns that header, the key id and
//! the owner into a descriptor, and only a request that carries the header costs a call to
//! the rate-limit service. A key with no limits, whose owner has none, costs nothing.
//!
//! The header value is the key's limits joined by `,`, each `requests/per` or
//! `name=requests/per` (`per-minute=100/minute,100000/day`), or [`OWNER_ONLY`] when only the
//! owner's limits apply. The rate-limit service parses it with [`parse_header`]; the
//! owner's limits it holds itself.

use crate::core::config::{ConfigError, Per, RawLimit};

/// Most limits one key or one owner may have.
pub const MAX_LIMITS: usize = 16;

/// Largest `requests` accepted: ten thousand a second for a year, far beyond any quota, and
/// small enough that no counter can overflow.
pub const MAX_REQUESTS: u64 = 1_000_000_000_000;

/// The header value of a key without limits of its own whose owner has some.
pub const OWNER_ONLY: &str = "owner";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub name: Option<Box<str>>,
    pub requests: u64,
    pub per: Per,
}

impl Limit {
    /// What names the limit in a list, in counters and in refusals: its name, else
    /// `requests/per`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.to_string(),
            None => format!("{}/{}", self.requests, self.per.name()),
        }
    }

    fn push(&self, out: &mut String) {
        if let Some(name) = &self.name {
            out.push_str(name);
            out.push('=');
        }
        out.push_str(&self.requests.to_string());
        out.push('/');
        out.push_str(self.per.name());
    }
}

/// Compiles a `limits` list found at `at` (`keys[3].limits`, `limits`).
pub fn compile(raw: &[RawLimit], at: &str) -> Result<Vec<Limit>, ConfigError> {
    if raw.len() > MAX_LIMITS {
        return Err(ConfigError::new(at, format!("at most {MAX_LIMITS} limits")));
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let here = |field: &str| format!("{at}[{i}].{field}");
        if let Some(name) = &r.name {
            check_name(name).map_err(|reason| ConfigError::new(here("name"), reason))?;
        }
        if !(1..=MAX_REQUESTS).contains(&r.requests) {
            return Err(ConfigError::new(
                here("requests"),
                format!("expected 1 to {MAX_REQUESTS}"),
            ));
        }
        let limit =
            Limit { name: r.name.as_deref().map(Into::into), requests: r.requests, per: r.per };
        let label = limit.label();
        if limits.iter().any(|l| l.label() == label) {
            let field = if limit.name.is_some() { "name" } else { "per" };
            return Err(ConfigError::new(
                here(field),
                format!("a limit named {label:?} is already in the list (name one of them)"),
            ));
        }
        limits.push(limit);
    }
    Ok(limits)
}

/// A limit's name: 1-64 of `A-Z a-z 0-9 . _ -`, so that it fits a header value and a
/// counter name unchanged.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let valid = (1..=64).contains(&name.len())
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err("expected 1-64 characters of A-Z a-z 0-9 . _ -")
    }
}

/// The forwarded header value for a key with these limits (and an owner that has limits
/// when `owner_limited`); `None` when nothing limits it, so the header is not sent.
pub fn header_value(limits: &[Limit], owner_limited: bool) -> Option<Box<str>> {
    if limits.is_empty() {
        return owner_limited.then(|| OWNER_ONLY.into());
    }
    let mut out = String::new();
    for (i, limit) in limits.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        limit.push(&mut out);
    }
    Some(out.into())
}

/// Reads a header value made by [`header_value`]; the rate-limit service's side. Anything
/// else is an error, never a guess.
pub fn parse_header(value: &str) -> Result<Vec<Limit>, &'static str> {
    if value == OWNER_ONLY {
        return Ok(Vec::new());
    }
    let mut limits = Vec::new();
    for part in value.split(',') {
        if limits.len() == MAX_LIMITS {
            return Err("too many limits");
        }
        let (name, rest) = match part.split_once('=') {
            Some((name, rest)) => {
                check_name(name)?;
                (Some(name.into()), rest)
            }
            None => (None, part),
        };
        let (requests, per) = rest.split_once('/').ok_or("expected requests/per")?;
        let requests = parse_requests(requests)?;
        let per = Per::ALL.into_iter().find(|p| p.name() == per).ok_or("unknown per")?;
        limits.push(Limit { name, requests, per });
    }
    Ok(limits)
}

fn parse_requests(text: &str) -> Result<u64, &'static str> {
    let digits_only =
        !text.is_empty() && text.len() <= 13 && text.bytes().all(|c| c.is_ascii_digit());
    let n: u64 = if digits_only { text.parse().map_err(|_| "bad requests")? } else { 0 };
    if (1..=MAX_REQUESTS).contains(&n) && !text.starts_with('0') {
        Ok(n)
    } else {
        Err("expected requests from 1")
    }
}
