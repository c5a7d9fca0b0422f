//! The filter: the proxy-wasm glue that runs in Envoy, and nothing else.
//!
//! - `abi`: the callbacks keygate exports to the host, each forwarding to `handlers`;
//! - `handlers`: what each callback does: read the request, ask the core, act on the verdict;
//! - `host`: every host call keygate makes, as small wrappers that never panic;
//! - `remote`: the key service's host calls (lookups and feed polls sent, answers read,
//!   `remote.*` counters flushed) around the core's `RemoteSource`, which decides what they
//!   mean;
//! - `usage`: the usage counts' host calls (the upstream status read, batches sent to the
//!   key service) around the core's `usage`;
//! - `headers`: the request header map read in place; `contexts`: which configuration serves
//!   which stream. Both are pure and tested natively.
//!
//! Where things go: a new host call in `host`, used from `handlers` (or `remote`, for the
//! key service), with what to make of its answer in the core; a new exported callback in
//! `abi`. `handlers` calls `remote`, never the other way round.

pub mod contexts;
pub mod headers;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod handlers;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod remote;
#[cfg(target_arch = "wasm32")]
mod usage;
