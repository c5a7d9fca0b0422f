//! The plugin configuration exactly as the operator writes it (JSON), and its errors.
//!
//! These types only describe the schema; `parse` reads them and `compile` turns them into
//! the [`Policy`] the filter serves from. Unknown fields are errors everywhere, so a typo never silently
//! weakens a policy.
//!
//! [`Policy`]: crate::core::policy::Policy

use serde::Deserialize;
use std::fmt;

/// Everything in the configuration but `keys`, which are compiled one by one as they
/// are read (see [`parse`](crate::core::parse)) so that a large table never exists twice in memory.
#[derive(Debug, Default)]
pub struct RawRest {
    pub forward: RawForward,
    pub cors_endpoints: Option<Vec<RawRule>>,
    pub public_endpoints: Vec<RawRule>,
    pub cors: RawCors,
    pub mode: Mode,
    pub key_format: RawKeyFormat,
    pub key_service: Option<RawKeyService>,
    pub usage: Option<RawUsage>,
}

/// `usage`: count requests per key and send the counts to the key service's cluster
/// (`POST {path_prefix}/usage`) every `flush_ms`, at most `max_keys` keys a minute kept apart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUsage {
    pub flush_ms: u32,
    pub max_keys: u32,
    /// Count the upstream's answers by status class too (a header read per forwarded request).
    pub upstream_status: bool,
}

impl Default for RawUsage {
    fn default() -> RawUsage {
        RawUsage { flush_ms: 10_000, max_keys: 10_000, upstream_status: false }
    }
}

/// `key_format`: `any` looks every key up; `checksummed` refuses a `kg_` key whose checksum
/// is wrong before any lookup; `checksummed_only` refuses every key not in keygate's
/// checksummed format (see `keyformat`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawKeyFormat {
    #[default]
    Any,
    Checksummed,
    ChecksummedOnly,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub sha256: Option<String>,
    /// Plaintext key, for local development only.
    pub key: Option<String>,
    pub owner: Option<String>,
    pub expires_at: Option<String>,
    pub not_before: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    pub cors: Option<RawKeyCors>,
    pub rules: Option<Vec<RawRule>>,
    pub resources: Option<Vec<String>>,
    /// Request limits, counted by a rate-limit service (see `limits`), not by the filter.
    pub limits: Option<Vec<RawLimit>>,
}

/// `{"name": "per-minute", "requests": 100, "per": "minute"}`: at most `requests` requests in
/// each fixed window of one `per`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub name: Option<String>,
    pub requests: u64,
    pub per: Per,
}

/// An owner's limits, as the key service takes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOwner {
    pub limits: Vec<RawLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
}

impl Per {
    pub const ALL: [Per; 4] = [Per::Second, Per::Minute, Per::Hour, Per::Day];

    pub fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3_600,
            Per::Day => 86_400,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
            Per::Day => "day",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyCors {
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub full_access: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub methods: Vec<String>,
    pub paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForward {
    pub key_id_header: String,
    pub owner_header: String,
    /// Carries a limited key's limits to Envoy's rate-limit filter (see `limits`).
    pub limits_header: String,
    pub strip_authorization: bool,
    /// Also expose the identity as filter state (`wasm.keygate.key_id`, `wasm.keygate.owner`)
    /// for access logs. Costs one or two host calls per allowed request.
    pub filter_state: bool,
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward {
            key_id_header: "x-api-key-id".into(),
            owner_header: "x-api-key-owner".into(),
            limits_header: "x-api-key-limits".into(),
            strip_authorization: false,
            filter_state: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCors {
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: u32,
    pub allow_credentials: bool,
}

impl Default for RawCors {
    fn default() -> Self {
        RawCors {
            allow_headers: vec!["authorization".into(), "content-type".into()],
            expose_headers: Vec::new(),
            max_age_seconds: 600,
            allow_credentials: false,
        }
    }
}

/// `enforce` refuses what fails; `report` lets everything through and says what it
/// would have refused, for rolling out a new policy safely.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

/// A configuration that cannot be served: where (a JSON path such as `keys[3].sha256`)
/// and why. Never holds a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { path: path.into(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Where keys the static table does not hold are looked up (see `core::remote`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyService {
    /// The Envoy cluster of the key service; required.
    pub cluster: String,
    /// `:authority` of the lookups; the cluster's name when absent.
    pub authority: Option<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    #[serde(default = "default_changes_poll_ms")]
    pub changes_poll_ms: u32,
    /// How long the service may hold a feed poll open until something changes; 0: it answers
    /// at once.
    #[serde(default = "default_changes_wait_ms")]
    pub changes_wait_ms: u32,
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
    #[serde(default)]
    pub cache: RawKeyCache,
}

fn default_path_prefix() -> String {
    "/v1/filter".into()
}
fn default_timeout_ms() -> u32 {
    250
}
fn default_changes_poll_ms() -> u32 {
    1000
}
fn default_changes_wait_ms() -> u32 {
    25_000
}
fn default_max_pending() -> u32 {
    256
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeyCache {
    pub max_entries: u32,
    pub ttl_seconds: u32,
    pub negative_ttl_seconds: u32,
    pub stale_if_error_seconds: u32,
}

impl Default for RawKeyCache {
    fn default() -> Self {
        RawKeyCache {
            max_entries: 100_000,
            ttl_seconds: 60,
            negative_ttl_seconds: 10,
            stale_if_error_seconds: 300,
        }
    }
}
