//! `keygate serve`: the key service. It keeps the keys (SQLite or PostgreSQL), serves the
//! admin API on one listener, the filter's read-only protocol on another and the rate-limit
//! service (`crate::ratelimit`) on a third, and can write the whole table as an Envoy ECDS
//! file.
//!
//! One file per job: `db` (the store and why the feed is exact), `admin` (the admin API's
//! routes and handlers), `api` (its bodies and OpenAPI document), `console` (the key
//! console page on the admin listener, and the listener's guards), `filter_api` (the filter
//! protocol), `feed` (the change feed and its cursors), `ecds` (the ECDS file), `error` (the
//! one error type and its JSON, and the 404 and 405 both listeners answer), `import`
//! (`--import`), `owners` (`/v1/owners`), `owner_sync` (the owners' limits kept in memory),
//! `sqlite_reader` and `postgres_reader` (the filter's key lookups, off
//! sqlx's pool), `metrics` (the Prometheus metrics and `--metrics-listen`).

mod admin;
pub mod api;
mod console;
mod db;
mod ecds;
pub mod error;
mod feed;
mod filter_api;
pub mod github;
mod import;
pub mod leaks;
pub mod listen;
pub mod metrics;
mod owner_sync;
mod owners;
mod postgres_reader;
pub mod request;
mod sqlite_reader;
pub mod usage;
mod usage_api;
mod webhooks;

use crate::ratelimit::counters::Counters;
use crate::ratelimit::owners::OwnerLimits;
use crate::ratelimit::service::{self, Limiter, OnError};
pub use admin::{openapi, routes as admin_routes};
use axum::response::IntoResponse;
pub use db::Limits;
use keygate::core::hex;
use keygate::core::keytable::Digest;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What `keygate serve` was asked to do (its options, see `cli/serve.rs`).
pub struct Settings {
    /// `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`.
    pub db: String,
    pub admin_listen: SocketAddr,
    pub filter_listen: SocketAddr,
    /// A plain-HTTP listener of its own for `GET /metrics`, without a token.
    pub metrics_listen: Option<SocketAddr>,
    pub ecds_file: Option<PathBuf>,
    pub ecds_base: Option<PathBuf>,
    pub ecds_wasm: String,
    pub import: Option<PathBuf>,
    /// PostgreSQL session limits (`db::Limits`).
    pub limits: db::Limits,
    /// How long an admin call may take before it is answered 503.
    pub admin_timeout: Duration,
    /// The listeners' limits, allowed hosts and TLS (`listen`).
    pub listen: listen::Listen,
    /// The rate-limit service (`ratelimit`): where, its counters' Redis, and what a counter
    /// failure answers.
    pub ratelimit_listen: SocketAddr,
    pub redis: Option<String>,
    pub ratelimit_on_error: OnError,
    /// What a reported leak does, and GitHub's public keys for its signed reports.
    pub on_leak: leaks::OnLeak,
    pub github_keys: Option<PathBuf>,
    /// Where key events are sent (`webhooks`), signed with `KEYGATE_WEBHOOK_SECRET`.
    pub webhooks: Vec<String>,
    /// How long usage is kept per minute, then per hour (`usage`).
    pub usage_retention: usage::Retention,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    db: Arc<db::Db>,
    /// SHA-256 of every admin token.
    admins: Arc<[Digest]>,
    /// Woken after each change this replica commits (for the ECDS file).
    changed: Arc<Notify>,
    /// Feed polls held open (`wait_ms`).
    held: Arc<feed::Held>,
    /// The owners' limits, as of the latest change (`owner_sync`).
    owners: Arc<OwnerLimits>,
    /// How leak reports are handled (`leaks`).
    leaks: Arc<leaks::Settings>,
}

pub fn run(args: Settings) -> Result<ExitCode, String> {
    let admins = admin_digests(std::env::var("KEYGATE_ADMIN_TOKEN_SHA256").ok().as_deref())
        .map_err(|e| format!("serve: {e}"))?;
    let ecds = match &args.ecds_file {
        Some(path) => Some(
            ecds::Ecds::new(path.clone(), args.ecds_base.as_deref(), args.ecds_wasm.clone())
                .map_err(|e| format!("serve: {e}"))?,
        ),
        None => None,
    };
    let github = match &args.github_keys {
        Some(path) => {
            Some(github::PublicKeys::load(path).map_err(|e| format!("serve: --github-keys: {e}"))?)
        }
        None => None,
    };
    let webhook_secret = if args.webhooks.is_empty() {
        None
    } else {
        match std::env::var("KEYGATE_WEBHOOK_SECRET") {
            Ok(secret) if secret.len() >= 16 => Some(Arc::<[u8]>::from(secret.into_bytes())),
            _ => {
                return Err("serve: --webhook needs KEYGATE_WEBHOOK_SECRET: the secret (16 bytes \
                            or more) the receivers check each event's HMAC-SHA256 with"
                    .into())
            }
        }
    };
    let leaks = Arc::new(leaks::Settings { on_leak: args.on_leak, github });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("serve: cannot start: {e}"))?;
    runtime
        .block_on(serve(args, admins, ecds, leaks, webhook_secret))
        .map_err(|e| format!("serve: {e}"))
}

async fn serve(
    args: Settings,
    admins: Vec<Digest>,
    ecds: Option<ecds::Ecds>,
    leaks: Arc<leaks::Settings>,
    webhook_secret: Option<Arc<[u8]>>,
) -> Result<ExitCode, String> {
    let mut db = db::Db::open(&args.db, args.limits).await?;
    db.webhooks = args.webhooks.clone();
    let db = Arc::new(db);
    if let Some(path) = &args.import {
        let done = import::import(&db, path, rfc3339(now_ms())).await?;
        println!(
            "keygate serve: imported {} keys from {} ({} already held)",
            done.added,
            path.display(),
            done.kept
        );
    }
    let state = AppState {
        db: db.clone(),
        admins: admins.into(),
        changed: Arc::new(Notify::new()),
        held: feed::Held::new(),
        owners: OwnerLimits::new(),
        leaks,
    };
    if let Some(secret) = webhook_secret {
        tokio::spawn(webhooks::run(db.clone(), secret));
    }
    tokio::spawn(feed::watch(db.clone(), state.held.clone()));
    tokio::spawn(usage::roll_up(db.clone(), args.usage_retention));
    owner_sync::load(&db, &state.owners)
        .await
        .map_err(|e| format!("cannot read owners: {}", e.body()))?;
    tokio::spawn(owner_sync::run(db.clone(), state.owners.clone()));
    let counters = match &args.redis {
        Some(url) => Counters::redis(url).await.map_err(|e| format!("--redis: {e}"))?,
        None => Counters::memory(),
    };
    let limiter = Arc::new(Limiter::new(counters, state.owners.clone(), args.ratelimit_on_error));
    let bind = |addr: SocketAddr, flag: &'static str| {
        listen::bind(addr).map_err(|e| format!("--{flag} {addr}: {e}"))
    };
    let admin_listener = bind(args.admin_listen, "admin-listen")?;
    let filter_listener = bind(args.filter_listen, "filter-listen")?;
    let ratelimit_listener = bind(args.ratelimit_listen, "ratelimit-listen")?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(bind(addr, "metrics-listen")?),
        None => None,
    };
    if let Some(ecds) = ecds {
        tokio::spawn(ecds::run(ecds, db.clone(), state.changed.clone()));
    }
    let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    // Tests and scripts read the listeners from this line: the metrics one, only when
    // asked for, goes last so that the rest of the line does not move.
    let metrics_at = match (&metrics_listener, args.metrics_listen) {
        (Some(l), Some(addr)) => format!(", metrics http://{}", local(l, addr)),
        _ => String::new(),
    };
    println!(
        "keygate serve: admin http://{}, filter {}://{}, rate limits grpc://{} (counters {}), db {}{metrics_at}",
        local(&admin_listener, args.admin_listen),
        args.listen.filter_scheme(),
        local(&filter_listener, args.filter_listen),
        local(&ratelimit_listener, args.ratelimit_listen),
        if args.redis.is_some() { "in Redis" } else { "in memory" },
        db::redact(&args.db)
    );
    let timeout = args.admin_timeout;
    let admin_routes = admin::router(state.clone()).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| async move {
            bounded(timeout, next.run(request)).await
        },
    ));
    // The console's headers (nosniff, no-store, ...) on the timeout's 503 too.
    let admin_routes = admin_routes.layer(axum::middleware::from_fn(console::headers));
    // Outermost, so that the timeout's 503 is counted like any other answer.
    let admin_routes = admin_routes.layer(axum::middleware::from_fn(metrics::count_admin_calls));
    let admin = listen::serve(admin_listener, admin_routes, &args.listen, listen::Which::Admin);
    let filter = listen::serve(
        filter_listener,
        filter_api::router(state),
        &args.listen,
        listen::Which::Filter,
    );
    let metrics = async {
        match metrics_listener {
            Some(l) => {
                listen::serve(l, metrics::router(), &args.listen, listen::Which::Admin).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = admin => r.map_err(|e| format!("admin listener: {e}"))?,
        r = metrics => r.map_err(|e| format!("metrics listener: {e}"))?,
        r = filter => r.map_err(|e| format!("filter listener: {e}"))?,
        r = service::serve(ratelimit_listener, limiter) => r.map_err(|e| format!("rate-limit listener: {e}"))?,
        () = stopped() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// An admin call's answer, or a 503 when it takes longer than `limit`: a database that does
/// not answer (a write lock held elsewhere, a stalled server) never holds a caller forever.
async fn bounded(
    limit: Duration,
    answer: impl std::future::Future<Output = axum::response::Response>,
) -> axum::response::Response {
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => {
            eprintln!(
                "keygate serve: an admin call took over {} ms; answered 503",
                limit.as_millis()
            );
            error::ApiError::unavailable(format!(
                "no answer within {} ms: the database is slow or its write lock is held elsewhere; try again",
                limit.as_millis()
            ))
            .into_response()
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `KEYGATE_ADMIN_TOKEN_SHA256`: comma-separated lower- or upper-case hex SHA-256 digests.
fn admin_digests(value: Option<&str>) -> Result<Vec<Digest>, String> {
    const HOW: &str = "the SHA-256 of each admin token (`keygate key new` makes a token, \
                       `keygate key hash` prints its digest), comma-separated";
    let value = value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("KEYGATE_ADMIN_TOKEN_SHA256 is not set: set it to {HOW}"))?;
    value
        .split(',')
        .enumerate()
        .map(|(i, item)| {
            hex::digest(item.trim()).ok_or_else(|| {
                format!(
                    "KEYGATE_ADMIN_TOKEN_SHA256: item {} is not 64 hex characters; expected {HOW}",
                    i + 1
                )
            })
        })
        .collect()
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Unix milliseconds as RFC 3339 UTC to the second (`2026-12-01T15:00:00Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil, in the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::core::timestamp::parse_rfc3339;

    #[test]
    fn rfc3339_round_trips_through_the_filters_parser() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2026-12-01T15:00:00Z",
            "2100-03-01T00:00:01Z",
            "2400-12-31T12:30:45Z",
        ] {
            let ms = parse_rfc3339(text).unwrap_or(-1);
            assert_eq!(rfc3339(ms), text);
            assert_eq!(rfc3339(ms + 999), text, "milliseconds are dropped");
        }
    }

    #[test]
    fn admin_digests_are_hex_and_comma_separated() {
        let a = "a".repeat(64);
        let b = "0123456789ABCDEF".repeat(4);
        let parsed = admin_digests(Some(&format!("{a}, {b}"))).unwrap_or_default();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1][..2], [0x01, 0x23]);
        assert!(admin_digests(None).is_err_and(|e| e.contains("is not set")));
        assert!(admin_digests(Some(" ")).is_err());
        assert!(admin_digests(Some(&format!("{a},"))).is_err_and(|e| e.contains("item 2")));
        assert!(admin_digests(Some(&"g".repeat(64))).is_err());
    }
}
