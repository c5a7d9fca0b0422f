//! `keygate check`: a configuration validated with exactly the filter's rules and messages.

use crate::source;
use clap::Args;
use keygate::core::config::Mode;
use keygate::core::policy::Policy;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CheckArgs {
    /// The file to check.
    file: PathBuf,
}

pub fn run(args: &CheckArgs) -> Result<ExitCode, String> {
    let file = &args.file;
    let mut valid = true;
    for config in source::plugin_configs(file)? {
        match Policy::from_json(&config.json) {
            Ok(compiled) => {
                for warning in &compiled.warnings {
                    eprintln!("{}: {}warning: {warning}", file.display(), config.place);
                }
                let p = &compiled.policy;
                let cors = p.keys.iter().filter(|k| k.origins.is_some()).count();
                let mode = match p.mode {
                    Mode::Enforce => "enforce",
                    Mode::Report => "report",
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
