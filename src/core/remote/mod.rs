//! The remote key source: keys the static table does not hold, looked up in a key service.
//!
//! - `protocol`: the three requests the filter sends and the answers it accepts, parsed
//!   into the same compiled [`Entry`](crate::core::entry::Entry) a static key has;
//! - `cache`: what one VM remembers of the answers: bounded, with TTLs, stale-if-error and
//!   invalidation by the change feed;
//! - `feed`: where one root context is in the change feed, and when it polls;
//! - `source`: the lookups in flight, the streams waiting on them, and which streams to
//!   decide again, and how, when an answer or a tick comes: events in, streams out.
//!
//! `decide` reads the cache and says when it must ask; `source` keeps track of the asking;
//! the filter's glue (`filter/remote.rs`) only sends the calls and reads their answers.
//! Nothing here calls the host.

pub mod cache;
pub mod feed;
pub mod protocol;
pub mod source;
