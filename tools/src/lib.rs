//! The keygate tools: the `keygate` command line (`cli`, one file per command) and the key
//! service it runs (`serve`). A library so that the fuzz targets drive the key service's
//! own request handling (`serve::request`); nothing here reaches the .wasm.
//!
//! Imports run one way: `main.rs` → `cli` (the commands) → `client` (the admin API's HTTP
//! client), `serve`, `explain` → shared helpers (`secret`, `source`) → the filter's core
//! (`keygate::core`).
//!
//! Where things go: a new command as a file in `cli/`, listed in `cli/mod.rs`; a new admin
//! endpoint in `serve/admin.rs`, registered in `admin::api()` with its `#[utoipa::path]`, so
//! the OpenAPI document and its check (`tools/tests/openapi.rs`) cover it; a database change
//! as the next numbered file in `tools/migrations/`.

#[cfg(target_arch = "wasm32")]
compile_error!(
    "the keygate CLI is native only; build the filter with ./wasm-build.sh (cargo build -p keygate --lib)"
);

pub mod cli;
pub mod client;
pub mod explain;
pub mod ratelimit;
pub mod secret;
pub mod serve;
pub mod source;
