//! Usage: the filters' batches taken (`POST /v1/filter/usage`, on the filter listener),
//! rolled up from minutes into hours, and the batch format's check.
//!
//! A batch (docs/remote-keys.md) is what one filter VM counted in one minute:
//! `{"batch": ID, "minute": MS, "keys": [{"id", "owner"?, "counts": {RESULT: N}}],
//!   "other"?: {RESULT: N}, "overflow"?: N, "unkeyed"?: {RESULT: N}}`.
//! It is checked whole before anything is written: a batch refused (400) is refused for
//! good, and the filter drops it; one taken is answered 200, and the same id again is
//! answered 200 without being counted twice.

use crate::serve::db::{Db, UsageRow};
use crate::serve::error::{json, ApiError};
use crate::serve::listen::Every;
use crate::serve::metrics::{self, Op, Taken};
use crate::serve::{now_ms, AppState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use keygate::core::usage::{usage_name, CLASSES};
use keygate::core::verdict::Outcome;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The largest batch body the service takes (filters send at most 64 KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Where requests without a key the filter knows are counted.
pub const UNKEYED: &str = "(unkeyed)";
/// Where keys past a filter's `usage.max_keys` are counted.
pub const OTHER: &str = "(other)";
const MAX_COUNT: u64 = 1_000_000_000_000;
const MINUTE_MS: i64 = 60_000;

/// How long minutes and hours are kept (`--usage-minutes-days`, `--usage-retention-days`).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub minutes_days: u32,
    pub hours_days: u32,
}

/// A batch, checked: its id, minute, rows and the keys it saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub id: String,
    pub minute: i64,
    pub rows: Vec<(String, Option<String>, &'static str, i64)>,
    pub used: Vec<String>,
}

/// Every result a batch may count: the filter's outcomes and the upstream classes.
fn result_name(name: &str) -> Option<&'static str> {
    if let Some(o) = Outcome::ALL.iter().find(|o| usage_name(**o) == name) {
        return Some(usage_name(*o));
    }
    let class = name.strip_prefix("upstream_")?;
    let i = CLASSES.iter().position(|c| *c == class)?;
    Some(["upstream_2xx", "upstream_3xx", "upstream_4xx", "upstream_429", "upstream_5xx"][i])
}

fn counts(
    value: Option<&Value>,
    at: &str,
    key: &str,
    owner: Option<&str>,
    rows: &mut Vec<(String, Option<String>, &'static str, i64)>,
) -> Result<(), String> {
    let Some(value) = value else { return Ok(()) };
    let map: &Map<String, Value> = value.as_object().ok_or(format!("{at}: expected an object"))?;
    for (name, n) in map {
        let result = result_name(name).ok_or(format!("{at}: unknown result {name:?}"))?;
        let n = n
            .as_u64()
            .filter(|n| *n <= MAX_COUNT)
            .ok_or(format!("{at}.{name}: expected a count, 0 to {MAX_COUNT}"))?;
        if n > 0 {
            rows.push((key.to_string(), owner.map(str::to_string), result, n as i64));
        }
    }
    Ok(())
}

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Checks a batch body; the reason names the JSON path.
pub fn parse_batch(body: &[u8]) -> Result<Batch, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let top = doc.as_object().ok_or("expected a JSON object")?;
    for field in top.keys() {
        if !["batch", "minute", "keys", "other", "overflow", "unkeyed"].contains(&field.as_str()) {
            return Err(format!("{field}: unknown field"));
        }
    }
    let id = top
        .get("batch")
        .and_then(Value::as_str)
        .filter(|s| {
            (1..=128).contains(&s.len())
                && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
        .ok_or("batch: expected 1-128 of A-Z a-z 0-9 -")?;
    let minute = top
        .get("minute")
        .and_then(Value::as_i64)
        .filter(|m| *m >= 0 && m % MINUTE_MS == 0)
        .ok_or("minute: expected the Unix milliseconds of a minute's start")?;
    let keys = top.get("keys").and_then(Value::as_array).ok_or("keys: expected a list")?;
    let mut rows = Vec::new();
    let mut used = Vec::with_capacity(keys.len());
    // A set: comparing each id with every one before it is half a million string compares for a
    // batch of a thousand keys.
    let mut seen = HashSet::with_capacity(keys.len());
    for (i, entry) in keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        let id = entry
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| is_id(s))
            .ok_or(format!("{at}.id: expected 1-64 of A-Z a-z 0-9 . _ -"))?;
        let owner = match entry.get("owner") {
            None | Some(Value::Null) => None,
            Some(Value::String(o)) if (1..=256).contains(&o.len()) => Some(o.as_str()),
            Some(_) => return Err(format!("{at}.owner: expected a string of 1-256 bytes")),
        };
        if !seen.insert(id) {
            return Err(format!("{at}.id: listed twice"));
        }
        counts(entry.get("counts"), &format!("{at}.counts"), id, owner, &mut rows)?;
        used.push(id.to_string());
    }
    counts(top.get("other"), "other", OTHER, None, &mut rows)?;
    counts(top.get("unkeyed"), "unkeyed", UNKEYED, None, &mut rows)?;
    if let Some(n) = top.get("overflow") {
        n.as_u64().filter(|n| *n <= MAX_COUNT).ok_or("overflow: expected a count")?;
    }
    Ok(Batch { id: id.to_string(), minute, rows, used })
}

/// `POST /v1/filter/usage`: `200 {"counted": true}`, or `{"counted": false}` for a batch
/// taken before; 400 for a batch that will never be taken.
pub async fn take(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if body.len() > MAX_BODY {
        metrics::batch(Taken::Refused, 0);
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "usage batch over 1 MiB"));
    }
    let batch = parse_batch(&body).map_err(ApiError::bad_request);
    let batch = batch.inspect_err(|_| metrics::batch(Taken::Refused, 0))?;
    let rows: Vec<UsageRow> = batch
        .rows
        .into_iter()
        .map(|(key_id, owner, result, count)| UsageRow { key_id, owner, result, count })
        .collect();
    let written = s.db.add_usage(&batch.id, batch.minute, &rows, &batch.used, now_ms());
    let counted = metrics::timed(Op::Usage, written).await;
    let counted = counted.inspect_err(|_| metrics::batch(Taken::Error, 0))?;
    if counted {
        metrics::batch(Taken::Counted, rows.len());
    } else {
        metrics::batch(Taken::Duplicate, 0);
    }
    Ok(json(StatusCode::OK, format!("{{\"counted\": {counted}}}")))
}

/// Moves recent minutes into the key-ordered table whenever enough have been added, and
/// every ten minutes rolls minutes up into hours and forgets what is past retention.
pub async fn roll_up(db: Arc<Db>, keep: Retention) {
    const DAY_MS: i64 = 86_400_000;
    const EVERY: Duration = Duration::from_secs(600);
    let log = Every::new(EVERY);
    let mut next = tokio::time::Instant::now();
    loop {
        let done = tokio::select! {
            () = tokio::time::sleep_until(next) => {
                next += EVERY;
                let now = now_ms();
                let minutes_before = now - i64::from(keep.minutes_days) * DAY_MS;
                // Only whole hours: a rolled-up hour never gets minutes later.
                let minutes_before = minutes_before - minutes_before.rem_euclid(3_600_000);
                let hours_before = now - i64::from(keep.hours_days) * DAY_MS;
                // Recent minutes first, so the roll-up sees them; were they left behind, a
                // later roll-up would add them to their hours all the same.
                let moved = metrics::timed(Op::UsageMove, db.move_recent_usage()).await;
                let rolled = db.roll_usage_up(minutes_before, hours_before, now - 2 * DAY_MS).await;
                moved.and(rolled)
            }
            () = db.recent_due.notified() => metrics::timed(Op::UsageMove, db.move_recent_usage()).await,
        };
        if let Err(e) = done {
            if log.now() {
                eprintln!("keygate serve: usage roll-up failed: {}", e.body());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_read_whole_and_every_refusal_names_its_path() {
        let body = br#"{"batch": "vm1-3", "minute": 1800000000000,
            "keys": [{"id": "web", "owner": "acme", "counts": {"allowed": 3, "upstream_2xx": 2, "denied_expired": 0}},
                     {"id": "cli", "counts": {"unavailable": 1}}],
            "other": {"allowed": 5}, "overflow": 5, "unkeyed": {"public": 2}}"#;
        let b = parse_batch(body).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((b.id.as_str(), b.minute), ("vm1-3", 1_800_000_000_000));
        assert_eq!(b.used, ["web", "cli"]);
        let rows: Vec<(&str, Option<&str>, &str, i64)> =
            b.rows.iter().map(|r| (r.0.as_str(), r.1.as_deref(), r.2, r.3)).collect();
        assert_eq!(
            rows,
            [
                ("web", Some("acme"), "allowed", 3),
                ("web", Some("acme"), "upstream_2xx", 2),
                ("cli", None, "unavailable", 1),
                (OTHER, None, "allowed", 5),
                (UNKEYED, None, "public", 2),
            ]
        );
        for (bad, why) in [
            (r#"[]"#, "expected a JSON object"),
            (
                r#"{"batch": "a b", "minute": 0, "keys": []}"#,
                "batch: expected 1-128 of A-Z a-z 0-9 -",
            ),
            (
                r#"{"batch": "a", "minute": 1, "keys": []}"#,
                "minute: expected the Unix milliseconds of a minute's start",
            ),
            (r#"{"batch": "a", "minute": 0}"#, "keys: expected a list"),
            (
                r#"{"batch": "a", "minute": 0, "keys": [{"id": "x y"}]}"#,
                "keys[0].id: expected 1-64 of A-Z a-z 0-9 . _ -",
            ),
            (
                r#"{"batch": "a", "minute": 0, "keys": [{"id": "x", "counts": {"allowd": 1}}]}"#,
                "keys[0].counts: unknown result \"allowd\"",
            ),
            (
                r#"{"batch": "a", "minute": 0, "keys": [{"id": "x", "counts": {"allowed": -1}}]}"#,
                "keys[0].counts.allowed: expected a count, 0 to 1000000000000",
            ),
            (
                r#"{"batch": "a", "minute": 0, "keys": [{"id": "x"}, {"id": "x"}]}"#,
                "keys[1].id: listed twice",
            ),
            (r#"{"batch": "a", "minute": 0, "keys": [], "extra": 1}"#, "extra: unknown field"),
        ] {
            assert_eq!(parse_batch(bad.as_bytes()), Err(why.to_string()), "{bad}");
        }
    }

    #[test]
    fn what_the_filter_sends_is_taken() {
        use keygate::core::usage::{Tally, MAX_BATCH_BYTES};
        let mut t = Tally::new(10, 1_800_000_000_000);
        for o in Outcome::ALL {
            t.decided(Some(("k", Some("o"))), o);
            t.decided(None, o);
        }
        for status in [200, 302, 404, 429, 503] {
            if let Some(c) = t.decided(Some(("k", Some("o"))), Outcome::Allowed) {
                t.responded(&c, status);
            }
        }
        let sealed = t.seal().unwrap_or_default();
        let batches = sealed.batches("vm", &mut 0, MAX_BATCH_BYTES);
        let b = parse_batch(batches[0].body.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        let total: i64 = b.rows.iter().map(|r| r.3).sum();
        assert_eq!(total as usize, 2 * Outcome::ALL.len() + 5 + 5);
    }
}
