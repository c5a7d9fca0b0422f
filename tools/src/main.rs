//! `keygate`: create and hash keys, check configurations and explain verdicts, with the
//! filter's own core: every rule and message here is the one Envoy applies.

use keygate_tools::{client, explain, key, serve, source};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keygate", version, about = "Manage keygate API keys and configurations", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new key, or hash an existing one.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Validate a configuration with exactly the filter's rules and messages.
    ///
    /// FILE is the plugin configuration as JSON, an Istio WasmPlugin (spec.pluginConfig),
    /// an Envoy Gateway EnvoyExtensionPolicy (spec.wasm[].config) or an Envoy config whose
    /// wasm filters carry keygate configurations. Exit status 0: valid; 1: invalid.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the verdict the filter would return for one request (never the key).
    Explain(explain::ExplainArgs),
    /// Run the key service: the admin API, the filter's remote-keys protocol, and
    /// optionally an ECDS file, over SQLite or PostgreSQL.
    ///
    /// Admin tokens: KEYGATE_ADMIN_TOKEN_SHA256 holds the SHA-256 of each (comma-separated).
    Serve(serve::ServeArgs),
    /// Manage keys in a key service (`keygate serve`) through its admin API.
    #[command(subcommand)]
    Keys(client::KeysCommand),
    /// Print a key service's whole table as a plugin configuration (with digests).
    Export(client::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Key(k) => key::run(k),
        Command::Check { file } => check(&file),
        Command::Explain(args) => explain::run(&args),
        Command::Serve(args) => serve::run(args),
        Command::Keys(cmd) => client::keys(cmd),
        Command::Export(args) => client::export(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("keygate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &std::path::Path) -> Result<ExitCode, String> {
    let mut valid = true;
    for config in source::plugin_configs(file)? {
        match keygate::core::policy::Policy::from_json(&config.json) {
            Ok(compiled) => {
                for warning in &compiled.warnings {
                    eprintln!("{}: {}warning: {warning}", file.display(), config.place);
                }
                let p = &compiled.policy;
                let cors = p.keys.iter().filter(|k| k.origins.is_some()).count();
                let mode = match p.mode {
                    keygate::core::config::Mode::Enforce => "enforce",
                    keygate::core::config::Mode::Report => "report",
                };
                let remote = p.remote.as_ref().map_or(String::new(), |s| {
                    format!(", other keys from the key service (cluster {})", s.cluster)
                });
                println!(
                    "{}: {}valid: {} keys ({cors} CORS-enabled), mode {mode}{remote}",
                    file.display(),
                    config.place,
                    p.keys.len()
                );
            }
            Err(e) => {
                eprintln!("{}: {}{e}", file.display(), config.place);
                valid = false;
            }
        }
    }
    Ok(if valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
