//! `keygate explain`: the verdict the filter would return, computed by the same core.

use crate::source;
use clap::Args;
use keygate::core::config::Mode;
use keygate::core::decide::{Ask, Decision, Failed, Remote, Request};
use keygate::core::policy::Policy;
use keygate::core::remote::cache::RemoteCache;
use keygate::core::remote::protocol;
use keygate::core::timestamp::parse_rfc3339;
use keygate::core::verdict::Outcome;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Output: `name: value` lines — `outcome`, `key_id`, `status` (`upstream` when the
/// request would be forwarded), then `body` and the response headers keygate would set,
/// or the identity headers it would forward.
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
    let policy = compiled.policy;

    let mut authorization = Vec::new();
    if args.header_stdin {
        std::io::stdin()
            .read_to_end(&mut authorization)
            .map_err(|e| format!("standard input: {e}"))?;
        while authorization.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            authorization.pop();
        }
    }
    let now = match &args.now {
        Some(t) => parse_rfc3339(t).map_err(|e| format!("--now: {e}"))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let mut req = Request {
        method: args.method.as_bytes(),
        path: args.path.as_bytes(),
        ..Request::default()
    };
    if args.header_stdin {
        req.authorization.push(&authorization);
    }
    if let Some(o) = &args.origin {
        req.origin.push(o.as_bytes());
    }
    if let Some(m) = &args.request_method {
        req.access_control_request_method.push(m.as_bytes());
    }

    // With a key service, an empty cache shows where the filter would ask instead.
    let cache = policy.remote.as_ref().and_then(|s| RemoteCache::new(s.cache));
    let remote = cache.as_ref().map(|cache| Remote { cache, failed: Failed::NONE });
    let verdict = match policy.decide_with(&req, now, remote) {
        Decision::Done(verdict) => verdict,
        Decision::Ask(ask) => {
            let service = policy.remote.as_ref().map_or("", |s| &s.path_prefix);
            let what = match ask {
                Ask::Key { digest, .. } => protocol::key_path(service, &digest),
                Ask::Origin => protocol::origin_path(
                    service,
                    args.origin.as_deref().unwrap_or_default().as_bytes(),
                ),
            };
            println!("outcome: remote lookup");
            println!("asks: GET {what}");
            println!("then: decided like a static key with the key service's answer; 503 if it cannot be had");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let enforce = policy.mode == Mode::Enforce || req.is_preflight();
    println!("outcome: {}", verdict.outcome.name());
    println!("key_id: {}", verdict.key.map_or("-", |k| &k.id));
    let mut headers: Vec<(String, String)> = Vec::new();
    match verdict.outcome.reply() {
        Some(reply) if enforce => {
            println!("status: {}", reply.status);
            println!("body: {}", reply.body);
            headers.push(("content-type".into(), "application/json".into()));
            if let Some(www) = reply.www_authenticate {
                headers.push(("www-authenticate".into(), www.into()));
            }
            if let Some(after) = reply.retry_after {
                headers.push(("retry-after".into(), after.into()));
            }
        }
        _ if verdict.outcome == Outcome::PreflightAllowed => {
            println!("status: 204");
            headers.push((
                "access-control-allow-methods".into(),
                args.request_method.clone().unwrap_or_default(),
            ));
            headers.push((
                "access-control-allow-headers".into(),
                policy.cors.allow_headers.to_string(),
            ));
            headers.push(("access-control-max-age".into(), policy.cors.max_age.to_string()));
        }
        denial => {
            println!("status: upstream");
            if let (Some(key), Outcome::Allowed) = (verdict.key, verdict.outcome) {
                headers.push((
                    format!("forward {}", policy.forward.key_id_header),
                    key.id.to_string(),
                ));
                if let Some(owner) = &key.owner {
                    headers.push((
                        format!("forward {}", policy.forward.owner_header),
                        owner.to_string(),
                    ));
                }
            }
            if denial.is_some() {
                headers
                    .push(("forward x-keygate-would-deny".into(), verdict.outcome.name().into()));
            }
        }
    }
    if let (Some(origin), true) = (&args.origin, verdict.allow_origin) {
        headers.push(("access-control-allow-origin".into(), origin.clone()));
    }
    for (name, value) in headers {
        println!("{name}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}
