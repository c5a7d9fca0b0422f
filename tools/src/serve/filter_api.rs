//! The protocol the filter speaks (`docs/remote-keys.md`): read-only, unauthenticated,
//! meant for the cluster network. Every answer is `application/json`; the filter treats
//! anything but 200 (and 404 for a key) as an error.

use crate::serve::db::Found;
use crate::serve::error::{json, method_not_allowed, not_found, ApiError};
use crate::serve::metrics::{self, Answer, Lookup, Op};
use crate::serve::{feed, now_ms, usage, AppState};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use keygate::core::cors::normalize_origin;
use keygate::core::timestamp::parse_rfc3339;
use serde_json::Value;
use std::collections::HashMap;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/filter/keys/{sha256}", get(key))
        .route("/v1/filter/origins/{origin}", get(origin))
        .route("/v1/filter/changes", get(changes))
        .route("/v1/filter/usage", post(usage::take))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `200 {"sha256": <digest>, "key": <entry>, "limited_owners": [..]}` for a known digest (disabled ones too: the
/// filter answers `denied_disabled`), else 404. The digest binds the answer to the question.
async fn key(
    State(s): State<AppState>,
    sha256: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found("no such key");
    let Path(sha256) = sha256.map_err(|_| unknown())?;
    if sha256.len() != 64 || !sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
        metrics::lookup(Lookup::Key, Answer::NotFound);
        return Err(unknown());
    }
    let sha256 = sha256.to_ascii_lowercase();
    let entry = metrics::timed(Op::Lookup, s.db.by_digest(&sha256)).await;
    metrics::lookup(Lookup::Key, metrics::found(entry.as_ref().map(Option::is_some)));
    let row = entry?.ok_or_else(unknown)?;
    let limited = limited_owners(std::slice::from_ref(&row));
    let entry = row.entry;
    Ok(json(StatusCode::OK, format!("{{\"sha256\": \"{sha256}\", \"key\": {entry}{limited}}}")))
}

/// `200 {"keys": [...]}`: every CORS key listing this origin or `*` that is not disabled
/// and not expired (scheduled keys included: the filter checks `not_before` itself).
async fn origin(
    State(s): State<AppState>,
    origin: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(origin) = origin.map_err(|_| ApiError::bad_request("not a percent-encoded origin"))?;
    // An origin no configuration could list (a path, `null`, another scheme) has no keys.
    let Ok(origin) = normalize_origin(&origin) else {
        metrics::lookup(Lookup::Origin, Answer::NotFound);
        return Ok(json(StatusCode::OK, "{\"keys\": []}".into()));
    };
    let now = now_ms();
    let entries = metrics::timed(Op::Origin, s.db.by_origin(&origin)).await;
    let entries = entries.inspect_err(|_| metrics::lookup(Lookup::Origin, Answer::Error))?;
    let live: Vec<Found> = entries.into_iter().filter(|e| is_live(&e.entry, now)).collect();
    metrics::lookup(Lookup::Origin, if live.is_empty() { Answer::NotFound } else { Answer::Found });
    let limited = limited_owners(&live);
    let keys: Vec<&str> = live.iter().map(|row| row.entry.as_str()).collect();
    Ok(json(StatusCode::OK, format!("{{\"keys\": [{}]{limited}}}", keys.join(", "))))
}

/// `, "limited_owners": [...]`: the owners of these keys that have limits, so that the
/// filter sends their keys to the rate-limit service; empty when none has.
fn limited_owners(rows: &[Found]) -> String {
    let mut limited: Vec<&str> = Vec::new();
    for owner in rows.iter().filter_map(|row| row.limited_owner.as_deref()) {
        if !limited.contains(&owner) {
            limited.push(owner);
        }
    }
    if limited.is_empty() {
        return String::new();
    }
    format!(", \"limited_owners\": {}", Value::from(limited))
}

fn is_live(entry: &str, now_ms: i64) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(entry) else { return false };
    if v.get("disabled").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    match v.get("expires_at").and_then(Value::as_str).map(parse_rfc3339) {
        Some(Ok(expires)) => expires > now_ms,
        Some(Err(_)) => false,
        None => true,
    }
}

/// `?after=CURSOR&wait_ms=N` (both optional; `wait_ms` 0-30000, read only with `after`).
async fn changes(
    State(s): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|_| ApiError::bad_request("malformed query string"))?;
    if let Some(other) = query.keys().find(|k| *k != "after" && *k != "wait_ms") {
        return Err(ApiError::bad_request(format!("unknown query parameter {other:?}")));
    }
    let wait_ms = match query.get("wait_ms") {
        None => 0,
        Some(text) => wait_ms(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "wait_ms: expected milliseconds, 0 to {}",
                feed::MAX_WAIT_MS
            ))
        })?,
    };
    let body =
        feed::changes(&s.db, &s.held, query.get("after").map(String::as_str), wait_ms).await?;
    metrics::feed(feed::carried(&body));
    Ok(json(StatusCode::OK, body))
}

fn wait_ms(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| *n <= feed::MAX_WAIT_MS)
}

#[cfg(test)]
mod tests {
    use super::{is_live, wait_ms};

    #[test]
    fn wait_ms_is_a_plain_number_up_to_30000() {
        assert_eq!(wait_ms("0"), Some(0));
        assert_eq!(wait_ms("30000"), Some(30_000));
        assert_eq!(wait_ms("00250"), Some(250));
        for bad in ["", "30001", "-1", "+5", "1.5", "1e3", "99999", "000000", " 5"] {
            assert_eq!(wait_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn disabled_and_expired_keys_are_not_live() {
        let now = 1_800_000_000_000;
        assert!(is_live(r#"{"id": "a"}"#, now));
        assert!(is_live(r#"{"id": "a", "not_before": "2100-01-01T00:00:00Z"}"#, now));
        assert!(!is_live(r#"{"id": "a", "disabled": true}"#, now));
        assert!(!is_live(r#"{"id": "a", "expires_at": "2020-01-01T00:00:00Z"}"#, now));
        assert!(is_live(r#"{"id": "a", "expires_at": "2100-01-01T00:00:00Z"}"#, now));
    }
}
