//! keygate: API-key authentication at the edge, as a proxy-wasm HTTP filter.
//!
//! - [`core`]: what the operator writes, how it is compiled, and the whole decision
//!   (`Policy::decide` → `Verdict`). Pure: no host calls, unit-tested natively, and shared
//!   with the `keygate` tools so that an entry means the same everywhere.
//! - [`filter`]: the proxy-wasm glue that runs in Envoy. It reads the request, asks the core,
//!   and carries out the verdict with host calls.
//!
//! Dependencies point one way: filter → core → nothing of keygate's.

pub mod core;
pub mod filter;
