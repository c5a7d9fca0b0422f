//! `keygate explain`: reads the configuration and the request, prints what the filter would
//! do with it (`crate::explain`).

use crate::explain::{explain, Question};
use crate::source;
use clap::Args;
use keygate::core::policy::Policy;
use keygate::core::timestamp::parse_rfc3339;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// The request to explain (the output is described on the command, in `cli/mod.rs`).
#[derive(Args)]
pub struct ExplainArgs {
    /// Configuration file (same formats as `keygate check`; the first configuration found).
    file: PathBuf,
    /// Request method, e.g. GET.
    #[arg(long)]
    method: String,
    /// Request path, with its query string if any.
    #[arg(long)]
    path: String,
    /// The Origin header, for a browser request.
    #[arg(long)]
    origin: Option<String>,
    /// Access-Control-Request-Method, for a preflight (with --method OPTIONS and --origin).
    #[arg(long, value_name = "METHOD")]
    request_method: Option<String>,
    /// Read the Authorization header value (e.g. `Bearer <key>`) from standard input,
    /// so the key stays out of shell history and the process list.
    #[arg(long)]
    header_stdin: bool,
    /// Evaluate at this RFC 3339 time instead of now.
    #[arg(long, value_name = "TIME")]
    now: Option<String>,
}

pub fn run(args: &ExplainArgs) -> Result<ExitCode, String> {
    let configs = source::plugin_configs(&args.file)?;
    let first = configs.first().ok_or("no configuration")?;
    let compiled =
        Policy::from_json(&first.json).map_err(|e| format!("{}: {e}", args.file.display()))?;

    let mut authorization = Vec::new();
    if args.header_stdin {
        std::io::stdin()
            .read_to_end(&mut authorization)
            .map_err(|e| format!("standard input: {e}"))?;
        while authorization.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            authorization.pop();
        }
    }
    let now_ms = match &args.now {
        Some(t) => parse_rfc3339(t).map_err(|e| format!("--now: {e}"))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let question = Question {
        method: &args.method,
        path: &args.path,
        origin: args.origin.as_deref(),
        request_method: args.request_method.as_deref(),
        authorization: args.header_stdin.then_some(authorization.as_slice()),
        now_ms,
    };
    for line in explain(&compiled.policy, &question) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
