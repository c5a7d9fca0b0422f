//! The `keygate` command line: one file per command. `key` works offline on this machine;
//! `keys`, `owners`, `export` and `usage` call a key service's admin API (through `crate::client`, with the
//! options in `connection`); `serve` runs one.

pub mod check;
pub mod connection;
pub mod explain;
pub mod export;
pub mod key;
pub mod keys;
pub mod limit_arg;
pub mod owners;
pub mod serve;
pub mod usage;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keygate", version, about = "Manage keygate API keys and configurations", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline, on this machine: make a key (and its config entry) or hash one.
    ///
    /// Nothing is sent anywhere: the entry (id, SHA-256, options) goes into a plugin
    /// configuration's static key table. For keys held by a key service, see `keygate keys`.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Validate a configuration with exactly the filter's rules and messages.
    ///
    /// FILE is the plugin configuration as JSON, an Istio WasmPlugin (spec.pluginConfig),
    /// an Envoy Gateway EnvoyExtensionPolicy (spec.wasm[].config) or an Envoy config whose
    /// wasm filters carry keygate configurations. Exit status 0: valid; 1: invalid.
    Check(check::CheckArgs),
    /// Print the verdict the filter would return for one request (never the key).
    ///
    /// Output: `name: value` lines: outcome, key_id, status (`upstream` when the request
    /// would be forwarded), then the body and headers keygate would answer with; or, when
    /// forwarded, the request headers it would add (`forward <header>: value`) and the CORS
    /// headers it would add to the upstream's response. Built by the filter's own response
    /// function, so it shows exactly what Envoy sends.
    Explain(explain::ExplainArgs),
    /// Run the key service: the admin API, the filter's remote-keys protocol, the
    /// rate-limit service, and optionally an ECDS file, over SQLite or PostgreSQL.
    ///
    /// Admin tokens: KEYGATE_ADMIN_TOKEN_SHA256 holds the SHA-256 of each (comma-separated).
    Serve(serve::ServeArgs),
    /// Manage the keys a key service (`keygate serve`) holds, through its admin API.
    ///
    /// Each command is one call to the service at --server, with the admin token from
    /// KEYGATE_ADMIN_TOKEN or --token-stdin; the service makes and stores the keys. For a
    /// key in a static configuration, made on this machine, see `keygate key`.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage limits shared by every key of an owner, through a key service's admin API.
    #[command(subcommand)]
    Owners(owners::OwnersCommand),
    /// Print a key service's whole table as a plugin configuration (with digests).
    Export(export::ExportArgs),
    /// What the filters counted: totals, per owner, and the keys with the most requests.
    Usage(usage::UsageArgs),
}

/// Runs the command line; errors are printed as `keygate: <message>` and exit with 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Key(cmd) => key::run(cmd),
        Command::Check(args) => check::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Serve(args) => serve::run(args),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Owners(cmd) => owners::run(cmd),
        Command::Export(args) => export::run(&args),
        Command::Usage(args) => usage::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("keygate: {message}");
            ExitCode::FAILURE
        }
    }
}
