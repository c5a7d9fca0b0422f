//! The keygate tools: the `keygate` command line (`main.rs`) and the key service it runs.
//! A library so that the fuzz targets drive the key service's own request handling
//! (`serve::request`); nothing here reaches the .wasm.
//!
//! Imports run one way: `main` → the commands → `client`, `serve`, `explain` → shared
//! helpers (`secret`, `source`, `serve::error`) → the filter's core (`keygate::core`).

#[cfg(target_arch = "wasm32")]
compile_error!(
    "the keygate CLI is native only; build the filter with ./wasm-build.sh (cargo build -p keygate --lib)"
);

pub mod client;
pub mod explain;
pub mod key;
pub mod secret;
pub mod serve;
pub mod source;
