//! The rate-limit service `keygate serve` runs on `--ratelimit-listen`: Envoy's own
//! `envoy.filters.http.ratelimit` filter asks it, over gRPC
//! (`envoy.service.ratelimit.v3.RateLimitService`), whether a request of a limited key may
//! pass.
//!
//! `decision` reads the descriptor and builds the answer, `counters` counts (in memory, or
//! in Redis shared by every replica), `owners` holds the owners' limits (the database's,
//! reloaded on every change), `service` is the gRPC server.

pub mod counters;
pub mod decision;
pub mod owners;
pub mod service;
