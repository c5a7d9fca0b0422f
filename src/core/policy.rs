//! The compiled configuration the filter serves from, built once per configure by
//! `compile` (which also defines `Policy::from_json`).

use crate::core::config::Mode;
use crate::core::cors::CorsIndex;
use crate::core::keyformat::KeyFormat;
use crate::core::keytable::KeyTable;
use crate::core::rules::RuleSet;
use crate::core::usage::UsageSettings;

#[derive(Debug)]
pub struct Policy {
    pub keys: KeyTable,
    /// Rule sets referenced by keys; index [`CORS_ENDPOINTS`] is `cors_endpoints`.
    pub rule_sets: Vec<RuleSet>,
    pub public: RuleSet,
    pub cors_index: CorsIndex,
    pub cors: CorsHeaders,
    pub forward: Forward,
    pub mode: Mode,
    /// Which presented keys are refused before any lookup (`key_format`).
    pub key_format: KeyFormat,
    /// Whether any key has `not_before` or `expires_at`: only then is the clock read.
    pub needs_clock: bool,
    /// The key service asked for keys the table does not hold (`key_service`).
    pub remote: Option<KeyService>,
    /// Usage counting (`usage`), sent to the key service's cluster; `None`: nothing counted.
    pub usage: Option<UsageSettings>,
}

/// Index of the top-level `cors_endpoints` in [`Policy::rule_sets`].
pub const CORS_ENDPOINTS: u32 = 0;

/// Header values for CORS responses, rendered once.
#[derive(Debug)]
pub struct CorsHeaders {
    pub allow_headers: Box<str>,
    pub expose_headers: Option<Box<str>>,
    pub max_age: Box<str>,
    pub allow_credentials: bool,
}

/// Where the authenticated identity goes upstream.
#[derive(Debug)]
pub struct Forward {
    pub key_id_header: Box<str>,
    pub owner_header: Box<str>,
    pub limits_header: Box<str>,
    pub strip_authorization: bool,
    pub filter_state: bool,
}

/// A policy plus the warnings worth logging once (never containing a key).
#[derive(Debug)]
pub struct Compiled {
    pub policy: Policy,
    pub warnings: Vec<String>,
}

impl Policy {
    pub fn rule_set(&self, index: u32) -> Option<&RuleSet> {
        self.rule_sets.get(index as usize)
    }
}

/// The compiled `key_service` object of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyService {
    pub cluster: Box<str>,
    pub authority: Box<str>,
    /// Starts with `/`, no trailing `/`.
    pub path_prefix: Box<str>,
    pub timeout_ms: u32,
    pub changes_poll_ms: u32,
    /// `wait_ms` of a feed poll after the first (0: none).
    pub changes_wait_ms: u32,
    /// Most lookups one VM has in flight at once.
    pub max_pending: u32,
    pub cache: CacheSettings,
}

/// Cache bounds and lifetimes, in entries and milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_entries: u32,
    /// Room for negative answers, apart from `max_entries`: a flood of unknown keys can only
    /// evict other unknown keys.
    pub max_negative: u32,
    pub ttl_ms: i64,
    pub negative_ttl_ms: i64,
    pub stale_if_error_ms: i64,
}
