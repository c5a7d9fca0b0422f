//! The remote key source: keys the static table does not hold, looked up in a key service.
//!
//! - `protocol`: the three requests the filter sends and the answers it accepts, parsed
//!   into the same compiled [`Entry`](crate::core::entry::Entry) a static key has;
//! - `cache`: what one VM remembers of the answers: bounded, with TTLs, stale-if-error and
//!   invalidation by the change feed.
//!
//! `decide` reads the cache and says when it must ask; the filter's glue asks (HTTP calls
//! through an Envoy cluster) and polls the feed. Nothing here calls the host.

pub mod cache;
pub mod protocol;
