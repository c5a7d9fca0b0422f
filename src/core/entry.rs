//! One key entry → [`Entry`]: the checks and lookup structures of a single key, named by
//! JSON path. The static table (`compile`), the key service's answers (`remote::protocol`)
//! and the tools all compile entries here, so an entry means the same, and is refused with
//! the same path and reason, wherever it comes from.

use crate::core::config::{ConfigError, RawKey, RawRule};
use crate::core::cors::{normalize_origin, Origins};
use crate::core::keytable::{Endpoints, Key};
use crate::core::policy::CORS_ENDPOINTS;
use crate::core::rules::{Resources, RuleSet};
use crate::core::window::Window;
use crate::core::{limits, path, timestamp};

/// One key entry compiled on its own: everything but its digest and its place in a table.
/// The static table and the key service's answers both compile entries here, so an entry
/// means the same, and is refused with the same path and reason, wherever it comes from.
#[derive(Debug)]
pub struct Entry {
    /// `endpoints` is `Own` when the entry has its own `rules` (in `own_rules`).
    pub key: Key,
    /// Boxed: most entries have none, and a VM may cache 100,000 of them.
    pub own_rules: Option<Box<RuleSet>>,
}

impl Entry {
    /// Compiles `rk` (its `id` already checked; `sha256`/`key` are the caller's business);
    /// errors are named below `at` (`keys[3]`, or `""` for an entry on its own).
    pub fn compile(rk: RawKey, at: &str) -> Result<Entry, ConfigError> {
        let path = |field: &str| join(at, field);
        let owner = match &rk.owner {
            Some(o) => Some(check_header_value(o).map_err(|r| ConfigError::new(path("owner"), r))?),
            None => None,
        };
        let window = window(&rk, at)?;
        let origins = match &rk.cors {
            Some(c) => Some(origins(&c.allowed_origins, &path("cors.allowed_origins"))?),
            None => None,
        };
        let full_access = rk.cors.as_ref().is_none_or(|c| c.full_access);
        let (endpoints, own_rules) = match &rk.rules {
            Some(_) if rk.cors.as_ref().is_some_and(|c| c.full_access) => {
                return Err(ConfigError::new(
                    path("rules"),
                    "a key with cors.full_access cannot also have rules",
                ));
            }
            Some(rules) => (Endpoints::Own, Some(Box::new(rule_set(&path("rules"), rules)?))),
            None if !full_access => (Endpoints::Rules(CORS_ENDPOINTS), None),
            None => (Endpoints::All, None),
        };
        let resources = match &rk.resources {
            Some(_) if endpoints == Endpoints::All => {
                return Err(ConfigError::new(
                    path("resources"),
                    "a key with full access cannot be scoped to resources (give it rules, or a cors object without full_access)",
                ));
            }
            Some(list) => Some(resources(list, &path("resources"))?),
            None => None,
        };
        let limits = match &rk.limits {
            Some(raw) => limits::compile(raw, &path("limits"))?,
            None => Vec::new(),
        };
        let key = Key {
            id: rk.id.into_boxed_str(),
            owner,
            window,
            disabled: rk.disabled,
            origins: origins.map(Box::new),
            endpoints,
            resources: resources.map(Box::new),
            limits: limits::header_value(&limits, false),
        };
        Ok(Entry { key, own_rules })
    }
}

/// `at.field`, or `field` alone at the top.
fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

pub fn rule_set(at: &str, raw: &[RawRule]) -> Result<RuleSet, ConfigError> {
    RuleSet::compile(raw).map_err(|e| ConfigError::new(format!("{at}{}", e.path), e.reason))
}

pub fn check_id(id: &str) -> Result<(), &'static str> {
    let valid = (1..=64).contains(&id.len())
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err("expected 1-64 characters of A-Z a-z 0-9 . _ -")
    }
}

fn window(rk: &RawKey, at: &str) -> Result<Window, ConfigError> {
    let time = |field: &str, value: &Option<String>| -> Result<Option<i64>, ConfigError> {
        value
            .as_deref()
            .map(|v| timestamp::parse_rfc3339(v).map_err(|r| ConfigError::new(join(at, field), r)))
            .transpose()
    };
    let not_before = time("not_before", &rk.not_before)?;
    let expires_at = time("expires_at", &rk.expires_at)?;
    if let (Some(start), Some(end)) = (not_before, expires_at) {
        if start >= end {
            return Err(ConfigError::new(join(at, "expires_at"), "must be later than not_before"));
        }
    }
    let window = Window {
        not_before: not_before.unwrap_or(i64::MIN),
        expires_at: expires_at.unwrap_or(i64::MAX),
    };
    Ok(window)
}

fn origins(raw: &[String], at: &str) -> Result<Origins, ConfigError> {
    if raw.iter().any(|o| o == "*") {
        if raw.len() > 1 {
            return Err(ConfigError::new(at, "\"*\" must be the only entry when present"));
        }
        return Ok(Origins::Any);
    }
    let mut list: Vec<Box<[u8]>> = Vec::with_capacity(raw.len());
    for (j, o) in raw.iter().enumerate() {
        let normal = normalize_origin(o).map_err(|r| ConfigError::new(format!("{at}[{j}]"), r))?;
        list.push(normal.into_bytes().into());
    }
    Ok(Origins::List(list))
}

fn resources(raw: &[String], at: &str) -> Result<Resources, ConfigError> {
    let mut set = Resources::with_capacity(raw.len());
    for (j, id) in raw.iter().enumerate() {
        if !path::is_safe_segment(id.as_bytes()) {
            return Err(ConfigError::new(
                format!("{at}[{j}]"),
                "not a path segment a request could carry",
            ));
        }
        set.insert(id.as_bytes().into());
    }
    Ok(set)
}

/// A value that goes into a forwarded header: printable ASCII, no surrounding spaces.
pub fn check_header_value(value: &str) -> Result<Box<str>, &'static str> {
    let valid = (1..=256).contains(&value.len())
        && value.bytes().all(|c| (0x20..0x7f).contains(&c))
        && !value.starts_with(' ')
        && !value.ends_with(' ');
    if valid {
        Ok(value.into())
    } else {
        Err("expected 1-256 printable ASCII characters")
    }
}
