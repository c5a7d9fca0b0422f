//! The filter: the proxy-wasm glue that runs in Envoy, and nothing else.
//!
//! - `abi`: the callbacks keygate exports to the host, each forwarding to `handlers`;
//! - `handlers`: what each callback does: read the request, ask the core, act on the verdict;
//! - `host`: every host call keygate makes, as small wrappers that never panic;
//! - `remote`: the key service: lookups in flight, paused streams, the change feed;
//! - `headers`: the request header map read in place; `contexts`: which configuration serves
//!   which stream. Both are pure and tested natively.
//!
//! Where things go: a new host call in `host`, used from `handlers`; a new exported callback
//! in `abi`.

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
