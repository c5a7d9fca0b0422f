//! `keygate serve`: runs the key service (`crate::serve`) with these options.

use crate::ratelimit::service::OnError;
use crate::serve::leaks::OnLeak;
use crate::serve::{self, Limits, Settings};
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// PostgreSQL's largest timeout setting, in milliseconds (`INT_MAX`).
const PG_MAX_MS: i64 = i32::MAX as i64;

#[derive(Args)]
pub struct ServeArgs {
    /// The database: sqlite:PATH (the file is created if missing) or
    /// postgres://USER@HOST:PORT/DB (replicas may share one).
    #[arg(long, value_name = "URL", default_value = "sqlite:keygate.db")]
    db: String,
    /// Where the admin API listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9100")]
    admin_listen: SocketAddr,
    /// Where the filter's protocol (/v1/filter/...) listens; no authentication.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9101")]
    filter_listen: SocketAddr,
    /// Also serve the Prometheus metrics at GET /metrics on this address, plain HTTP and
    /// without a token (for a scraper on a private network). The admin listener serves them
    /// at /metrics with an admin token either way.
    // Boxed, as `--ratelimit-on-error` is parsed to its 1-byte enum here: `ServeArgs` is the
    // largest of the subcommands' arguments, and clippy holds the command enum's variants
    // within 200 bytes of one another.
    #[arg(long, value_name = "ADDR", value_parser = socket_addr)]
    metrics_listen: Option<Box<SocketAddr>>,
    /// After every change, write the whole table here as an Envoy ECDS file.
    #[arg(long, value_name = "PATH")]
    ecds_file: Option<PathBuf>,
    /// The plugin configuration (JSON, without keys) the ECDS file carries beside the keys.
    #[arg(long, value_name = "FILE", requires = "ecds_file")]
    ecds_base: Option<PathBuf>,
    /// The .wasm path the ECDS file tells Envoy to load.
    #[arg(long, value_name = "PATH", default_value = "dist/keygate.wasm")]
    ecds_wasm: String,
    /// At start, add the keys of this plugin configuration (JSON, with sha256 digests) whose
    /// ids the database does not hold yet: a static table moved into the service.
    #[arg(long, value_name = "FILE")]
    import: Option<PathBuf>,
    /// PostgreSQL: how long a statement waits for a lock (the write lock included) before it
    /// fails and the call answers 503; 0 waits forever.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().lock_timeout_ms,
          value_parser = clap::value_parser!(u32).range(0..=PG_MAX_MS))]
    db_lock_timeout_ms: u32,
    /// PostgreSQL: how long one statement may run; 0 for no limit.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().statement_timeout_ms,
          value_parser = clap::value_parser!(u32).range(0..=PG_MAX_MS))]
    db_statement_timeout_ms: u32,
    /// PostgreSQL: how long a session may sit idle inside a transaction before the server
    /// ends it, releasing its locks (a frozen replica's write lock); 0 for no limit.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().idle_in_transaction_timeout_ms,
          value_parser = clap::value_parser!(u32).range(0..=PG_MAX_MS))]
    db_idle_in_transaction_timeout_ms: u32,
    /// How long an admin call may take before it is answered 503.
    #[arg(long, value_name = "MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    admin_timeout_ms: u64,
    /// Where the rate-limit service (Envoy's gRPC RateLimitService, h2c) listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9102")]
    ratelimit_listen: SocketAddr,
    /// Keep the rate-limit counters in this Redis (`redis://HOST:PORT[/DB]`), shared by every
    /// replica; without it they are in this process's memory.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// When the counters cannot be reached: `allow` answers OK (the key itself is still
    /// checked by the filter), `deny` answers UNAVAILABLE (Envoy's failure_mode_deny decides).
    #[arg(long, value_name = "WHAT", default_value = "allow",
          value_parser = PossibleValuesParser::new(["allow", "deny"])
              .map(|v| if v == "deny" { OnError::Deny } else { OnError::Allow }))]
    ratelimit_on_error: OnError,
    /// What a reported leak does to a key held here: `disable` it at once, or
    /// `expire-in=DURATION` (`24h`, `7d`, ...) to end it that long after the report, so its
    /// owner can rotate without an outage.
    #[arg(long, value_name = "WHAT", default_value = "disable", value_parser = OnLeak::parse)]
    on_leak: OnLeak,
    /// Accept GitHub secret scanning reports at POST /v1/leaks/github, signed by one of the
    /// public keys in this file (the JSON GitHub publishes at
    /// https://api.github.com/meta/public_keys/secret_scanning).
    #[arg(long, value_name = "FILE")]
    github_keys: Option<PathBuf>,
    /// POST every key event (key.created, key.revoked, key.rotated, key.leaked, key.expiring)
    /// to this URL, signed with HMAC-SHA256 under KEYGATE_WEBHOOK_SECRET; repeatable.
    #[arg(long = "webhook", value_name = "URL", value_parser = webhook_url)]
    webhooks: Vec<String>,
    /// Keep usage per minute this many days, then per hour.
    #[arg(long, value_name = "DAYS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=366))]
    usage_minutes_days: u32,
    /// Keep usage per hour this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=3_660))]
    usage_retention_days: u32,
    #[command(flatten)]
    pub listen: serve::listen::ListenArgs,
}

fn socket_addr(text: &str) -> Result<Box<SocketAddr>, String> {
    text.parse().map(Box::new).map_err(|e| format!("{e}"))
}

fn webhook_url(text: &str) -> Result<String, String> {
    let rest = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !text.chars().any(char::is_whitespace) => Ok(text.into()),
        _ => Err("expected an http:// or https:// URL".into()),
    }
}

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    serve::run(Settings {
        db: args.db,
        admin_listen: args.admin_listen,
        filter_listen: args.filter_listen,
        metrics_listen: args.metrics_listen.map(|addr| *addr),
        ecds_file: args.ecds_file,
        ecds_base: args.ecds_base,
        ecds_wasm: args.ecds_wasm,
        import: args.import,
        limits: Limits {
            lock_timeout_ms: args.db_lock_timeout_ms,
            statement_timeout_ms: args.db_statement_timeout_ms,
            idle_in_transaction_timeout_ms: args.db_idle_in_transaction_timeout_ms,
        },
        admin_timeout: Duration::from_millis(args.admin_timeout_ms),
        ratelimit_listen: args.ratelimit_listen,
        redis: args.redis,
        ratelimit_on_error: args.ratelimit_on_error,
        on_leak: args.on_leak,
        github_keys: args.github_keys,
        webhooks: args.webhooks,
        usage_retention: serve::usage::Retention {
            minutes_days: args.usage_minutes_days,
            hours_days: args.usage_retention_days.max(args.usage_minutes_days),
        },
        listen: args.listen.load().map_err(|e| format!("serve: {e}"))?,
    })
}
