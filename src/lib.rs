//! keygate: API-key authentication at the edge, as a proxy-wasm HTTP filter.
//!
//! Everything but `filter` and `host` is a pure core with no proxy-wasm in it, so the
//! whole decision is unit-tested natively and shared with the `keygate` CLI.

pub mod compile;
pub mod config;
pub mod contexts;
pub mod cors;
pub mod decide;
pub mod headers;
pub mod keytable;
pub mod path;
pub mod policy;
pub mod rules;
pub mod timestamp;
pub mod token;
pub mod verdict;
pub mod verified;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;
