//! The key service's Prometheus metrics, in the text exposition format: at `GET /metrics`
//! on the admin listener (with an admin token, like the rest of `/v1/`), and at
//! `GET /metrics` on `--metrics-listen` when it is given (no token: for a scraper on a
//! private network, as the filter listener is for the filters).
//!
//! One registry, every metric defined here; handlers record with one-liners
//! (`metrics::lookup(Lookup::Key, Answer::Found)`, `metrics::timed(Op::Write, ...)`). Every
//! series with known labels exists from the start at 0, so that a rate over it does not miss
//! its first event. Should the registry fail to build (a bug: the names are constants), the
//! service still runs, says so once, and answers the metrics with a 500.

use crate::serve::admin::{logins, Admin};
use crate::serve::error::{method_not_allowed, not_found, ApiError};
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{
    HistogramOpts, HistogramTimer, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::future::Future;
use std::sync::{LazyLock, Mutex};

/// What both listeners answer the metrics with: the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Database latency buckets, in seconds: from a cached SQLite read (well under a
/// millisecond) to a PostgreSQL write waiting on the write lock.
const DB_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// An enum of label values: each variant's label, and all of them (for the series at 0).
macro_rules! labels {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];

            fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

labels!(
    /// What the filter looked up: a key by digest, or the keys of a CORS origin.
    Lookup { Key = "key", Origin = "origin" }
);
labels!(
    /// How a lookup was answered (an origin is `found` when it has a live key).
    Answer { Found = "found", NotFound = "not_found", Error = "error" }
);
labels!(
    /// What a change-feed answer carried.
    Feed { Changes = "changes", Reset = "reset", Empty = "empty" }
);
labels!(
    /// What became of a usage batch: `refused` for good (400, 413), `error` when the
    /// database failed and the filter will send it again.
    Taken { Counted = "counted", Duplicate = "duplicate", Refused = "refused", Error = "error" }
);
labels!(
    /// A rate-limit decision: `error` when the counters could not be reached, whatever
    /// `--ratelimit-on-error` then answered.
    Decision { Ok = "ok", OverLimit = "over_limit", Error = "error" }
);
labels!(
    /// The database calls timed.
    Op {
        Lookup = "lookup",
        Origin = "origin",
        Feed = "feed",
        Write = "write",
        Usage = "usage",
        UsageMove = "usage_move",
    }
);

struct Metrics {
    registry: Registry,
    lookups: IntCounterVec,
    feed_answers: IntCounterVec,
    feed_held: IntGauge,
    admin_calls: IntCounterVec,
    usage_batches: IntCounterVec,
    usage_rows: IntCounter,
    decisions: IntCounterVec,
    db: HistogramVec,
    token_failures: IntCounter,
    /// Held while `token_failures` is brought up to `logins::failed_total()`, so that two
    /// scrapes at once do not both add the same failures.
    token_sync: Mutex<()>,
}

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let lookups = counters(
            "keygate_lookups_total",
            "Lookups the filters made on the filter listener, by kind and answer.",
            &["kind", "result"],
        )?;
        let feed_answers = counters(
            "keygate_feed_answers_total",
            "Change-feed answers, by what they carried (changes, a reset, or nothing new).",
            &["result"],
        )?;
        let admin_calls = counters(
            "keygate_admin_calls_total",
            "Calls to the admin listener, by method, route template (unmatched: none) and status.",
            &["method", "route", "status"],
        )?;
        let usage_batches = counters(
            "keygate_usage_batches_total",
            "Usage batches the filters sent, by what became of them.",
            &["result"],
        )?;
        let decisions = counters(
            "keygate_ratelimit_decisions_total",
            "Rate-limit decisions, by code (error: the counters could not be reached).",
            &["code"],
        )?;
        let usage_rows = IntCounter::new(
            "keygate_usage_rows_total",
            "Usage rows (a key, a result and a count) written from counted batches.",
        )?;
        registry.register(Box::new(usage_rows.clone()))?;
        let feed_held =
            IntGauge::new("keygate_feed_held", "Change-feed polls held open now (wait_ms).")?;
        registry.register(Box::new(feed_held.clone()))?;
        let token_failures = IntCounter::new(
            "keygate_admin_token_failures_total",
            "Admin calls refused for an admin token that is not listed (a call without one is not counted).",
        )?;
        registry.register(Box::new(token_failures.clone()))?;
        let db = HistogramVec::new(
            HistogramOpts::new("keygate_db_seconds", "Database calls' latency, by operation.")
                .buckets(DB_BUCKETS.to_vec()),
            &["op"],
        )?;
        registry.register(Box::new(db.clone()))?;

        for kind in Lookup::ALL {
            for answer in Answer::ALL {
                lookups.with_label_values(&[kind.label(), answer.label()]);
            }
        }
        for feed in Feed::ALL {
            feed_answers.with_label_values(&[feed.label()]);
        }
        for batch in Taken::ALL {
            usage_batches.with_label_values(&[batch.label()]);
        }
        for decision in Decision::ALL {
            decisions.with_label_values(&[decision.label()]);
        }
        for op in Op::ALL {
            db.with_label_values(&[op.label()]);
        }
        Ok(Metrics {
            registry,
            lookups,
            feed_answers,
            feed_held,
            admin_calls,
            usage_batches,
            usage_rows,
            decisions,
            db,
            token_failures,
            token_sync: Mutex::new(()),
        })
    }
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match Metrics::new() {
    Ok(m) => Some(m),
    Err(e) => {
        eprintln!("keygate serve: the metrics cannot be set up ({e}); /metrics answers 500");
        None
    }
});

fn with(record: impl FnOnce(&Metrics)) {
    if let Some(m) = METRICS.as_ref() {
        record(m);
    }
}

/// A filter lookup answered.
pub fn lookup(kind: Lookup, answer: Answer) {
    with(|m| m.lookups.with_label_values(&[kind.label(), answer.label()]).inc());
}

/// A lookup's answer from the database's: found, not found, or an error.
pub fn found<E>(result: Result<bool, E>) -> Answer {
    match result {
        Ok(true) => Answer::Found,
        Ok(false) => Answer::NotFound,
        Err(_) => Answer::Error,
    }
}

/// A change-feed answer sent.
pub fn feed(answer: Feed) {
    with(|m| m.feed_answers.with_label_values(&[answer.label()]).inc());
}

/// A feed poll held (`1`) or let go (`-1`).
pub fn feed_held(change: i64) {
    with(|m| m.feed_held.add(change));
}

/// A usage batch answered, and the rows it wrote.
pub fn batch(result: Taken, rows: usize) {
    with(|m| {
        m.usage_batches.with_label_values(&[result.label()]).inc();
        m.usage_rows.inc_by(rows as u64);
    });
}

/// A rate-limit decision made.
pub fn decision(decision: Decision) {
    with(|m| m.decisions.with_label_values(&[decision.label()]).inc());
}

/// Times `op` until the timer is dropped (a call given up half-way is timed too).
pub fn timer(op: Op) -> Option<HistogramTimer> {
    METRICS.as_ref().map(|m| m.db.with_label_values(&[op.label()]).start_timer())
}

/// `call`, a database call, timed as `op`.
pub async fn timed<F: Future>(op: Op, call: F) -> F::Output {
    let _timer = timer(op);
    call.await
}

/// The method as a label: the ones HTTP defines, and `other` for the rest, so that a client
/// inventing methods cannot add series.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] =
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.into_iter().find(|m| *m == method.as_str()).unwrap_or("other")
}

/// Middleware: counts each admin call by method, route template and status. Layered outside
/// the admin timeout, so a call answered 503 for taking too long is counted as such. The
/// route is the template (`/v1/keys/{id}`), never the path: ids do not become series.
pub async fn count_admin_calls(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    with(|m| {
        let route = route.as_deref().unwrap_or("unmatched");
        m.admin_calls.with_label_values(&[method, route, status.as_str()]).inc();
    });
    response
}

/// Every metric in the text format.
pub fn text() -> Result<String, String> {
    let m = METRICS.as_ref().ok_or("the metrics could not be set up (see the log at start)")?;
    {
        // The failures are counted where they happen (`logins`); brought up to date here.
        let _one = m.token_sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (total, shown) = (logins::failed_total(), m.token_failures.get());
        m.token_failures.inc_by(total.saturating_sub(shown));
    }
    let mut out = String::new();
    TextEncoder::new().encode_utf8(&m.registry.gather(), &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn answer() -> Response {
    match text() {
        Ok(body) => {
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(e) => {
            eprintln!("keygate serve: cannot write the metrics: {e}");
            ApiError::internal().into_response()
        }
    }
}

/// The service's metrics (Prometheus text format), for a scraper holding an admin token;
/// `--metrics-listen` serves the same at `/metrics` without one.
#[utoipa::path(
    get, path = "/metrics", tag = "meta", operation_id = "metrics",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every metric, in the Prometheus text format 0.0.4",
         content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "No or unknown admin token", body = crate::serve::api::Error),
    )
)]
pub async fn scrape(_admin: Admin) -> Response {
    answer()
}

/// The `--metrics-listen` listener: `GET /metrics` only, without a token; anything else is
/// answered 404 or 405 in JSON, as on the other listeners.
pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(|| async { answer() }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample's value in the text, by its name and labels as written (`name{a="b"}`).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_metric_is_named_helped_and_typed() {
        let text = match text() {
            Ok(t) => t,
            Err(e) => unreachable!("{e}"),
        };
        for (name, kind) in [
            ("keygate_lookups_total", "counter"),
            ("keygate_feed_answers_total", "counter"),
            ("keygate_feed_held", "gauge"),
            ("keygate_usage_batches_total", "counter"),
            ("keygate_usage_rows_total", "counter"),
            ("keygate_ratelimit_decisions_total", "counter"),
            ("keygate_db_seconds", "histogram"),
            ("keygate_admin_token_failures_total", "counter"),
        ] {
            // (The admin calls' series are made by calls: see the next test.)
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}:\n{text}");
        }
        for series in [
            r#"keygate_lookups_total{kind="origin",result="error"}"#,
            r#"keygate_feed_answers_total{result="reset"}"#,
            r#"keygate_usage_batches_total{result="refused"}"#,
            r#"keygate_ratelimit_decisions_total{code="over_limit"}"#,
            r#"keygate_db_seconds_bucket{op="usage",le="2.5"}"#,
            r#"keygate_db_seconds_count{op="write"}"#,
        ] {
            assert!(sample(&text, series).is_some(), "{series} from the start:\n{text}");
        }
        assert!(CONTENT_TYPE.starts_with(prometheus::TEXT_FORMAT));
    }

    #[tokio::test]
    async fn admin_calls_are_counted_by_route_template_and_status() {
        use tower::ServiceExt as _;
        let app = Router::new()
            .route("/v1/probe/{id}", get(|| async { "ok" }))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn(count_admin_calls));
        let call = |method: &str, path: &str| {
            let request = axum::http::Request::builder().method(method).uri(path);
            app.clone().oneshot(request.body(axum::body::Body::empty()).unwrap_or_default())
        };
        for (method, path) in
            [("GET", "/v1/probe/a"), ("GET", "/v1/probe/b"), ("POST", "/v1/probe/c"), ("GET", "/x")]
        {
            assert!(call(method, path).await.is_ok());
        }
        let text = text().unwrap_or_default();
        let count = |labels: &str| sample(&text, &format!("keygate_admin_calls_total{{{labels}}}"));
        assert_eq!(count(r#"method="GET",route="/v1/probe/{id}",status="200""#), Some(2.0));
        assert_eq!(count(r#"method="POST",route="/v1/probe/{id}",status="405""#), Some(1.0));
        assert!(count(r#"method="GET",route="unmatched",status="404""#).is_some_and(|n| n >= 1.0));
        assert!(!text.contains("/v1/probe/a"), "a path is never a label:\n{text}");
    }

    #[test]
    fn recorded_events_show_in_the_text() {
        let series = r#"keygate_lookups_total{kind="key",result="not_found"}"#;
        let read = || text().ok().and_then(|t| sample(&t, series)).unwrap_or(-1.0);
        let before = read();
        lookup(Lookup::Key, Answer::NotFound);
        lookup(Lookup::Key, Answer::NotFound);
        // Other tests may record too, never fewer.
        assert!(read() >= before + 2.0);

        let rows = || text().ok().and_then(|t| sample(&t, "keygate_usage_rows_total"));
        let before = rows().unwrap_or(-1.0);
        batch(Taken::Counted, 3);
        assert!(rows().unwrap_or(-1.0) >= before + 3.0);

        let count = r#"keygate_db_seconds_count{op="origin"}"#;
        let timed_before = text().ok().and_then(|t| sample(&t, count)).unwrap_or(-1.0);
        drop(timer(Op::Origin));
        assert!(text().ok().and_then(|t| sample(&t, count)).unwrap_or(-1.0) >= timed_before + 1.0);
    }

    #[test]
    fn admin_token_failures_follow_the_logins_counter() {
        let _ = logins::failed([192, 0, 2, 99].into());
        let total = logins::failed_total() as f64;
        let shown = text().ok().and_then(|t| sample(&t, "keygate_admin_token_failures_total"));
        assert!(shown.is_some_and(|n| n >= total), "{shown:?} < {total}");
    }

    #[test]
    fn methods_outside_http_are_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"BREW").unwrap_or(Method::GET);
        assert_eq!(method_label(&invented), "other");
    }
}
