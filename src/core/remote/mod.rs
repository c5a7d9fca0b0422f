//! The remote key source: keys the static table does not hold, looked up in a key service.
//!
//! - `protocol`: the three requests the filter sends and the answers it accepts, parsed
//!   into the same compiled [`Entry`](crate::core::compile::Entry) a static key has;
//! - `cache`: what one VM remembers of the answers: bounded, with TTLs, stale-if-error and
//!   invalidation by the change feed.
//!
//! `decide` reads the cache and says when it must ask; the filter's glue asks (HTTP calls
//! through an Envoy cluster) and polls the feed. Nothing here calls the host.

pub mod cache;
pub mod protocol;

/// The compiled `key_service` object of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyService {
    pub cluster: Box<str>,
    pub authority: Box<str>,
    /// Starts with `/`, no trailing `/`.
    pub path_prefix: Box<str>,
    pub timeout_ms: u32,
    pub changes_poll_ms: u32,
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
