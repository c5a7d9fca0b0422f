//! Usage on the admin API: a key's time series (`GET /v1/keys/{id}/usage`) and totals per
//! owner with the top keys (`GET /v1/usage`), read from the filters' counts (`usage`).

use crate::serve::admin::{answer, params, Admin, Params};
use crate::serve::api::{
    names, Error, KeyUsage, UsagePointBody, UsageQuery, UsageTotals, UsageWho,
};
use crate::serve::error::ApiError;
use crate::serve::usage::{OTHER, UNKEYED};
use crate::serve::{now_ms, rfc3339, AppState};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keygate::core::timestamp::parse_rfc3339;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The most points one series may have.
pub const MAX_POINTS: i64 = 10_000;
/// How many keys `GET /v1/usage` lists, most requests first.
pub const TOP_KEYS: usize = 10;

/// A window and a step, read from the query.
struct Window {
    from: i64,
    to: i64,
    step: i64,
    step_name: &'static str,
}

fn window(q: &HashMap<String, String>) -> Result<Window, ApiError> {
    let time = |name: &str, default: i64| match q.get(name) {
        None => Ok(default),
        Some(t) => parse_rfc3339(t).map_err(|_| {
            ApiError::bad_request(format!(
                "{name}: expected an RFC 3339 time such as 2026-12-01T00:00:00Z"
            ))
        }),
    };
    let (step, step_name) = match q.get("step").map(String::as_str) {
        None | Some("hour") => (3_600_000, "hour"),
        Some("minute") => (60_000, "minute"),
        Some("day") => (86_400_000, "day"),
        Some(_) => return Err(ApiError::bad_request("step: expected minute, hour or day")),
    };
    let to = time("to", now_ms())?;
    let from = time("from", to - 86_400_000)?;
    // Whole buckets: from rounded down, to rounded up.
    let from = from - from.rem_euclid(step);
    let to = to + (step - to.rem_euclid(step)) % step;
    if from >= to {
        return Err(ApiError::bad_request("from: must be before to"));
    }
    if (to - from) / step > MAX_POINTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_POINTS} points: a longer step, or a shorter window"
        )));
    }
    Ok(Window { from, to, step, step_name })
}

/// Requests decided (the upstream classes count answers, not requests).
fn requests(counts: &Map<String, Value>) -> i64 {
    counts.iter().filter(|(k, _)| !k.starts_with("upstream_")).filter_map(|(_, v)| v.as_i64()).sum()
}

fn add(counts: &mut Map<String, Value>, result: &str, n: i64) {
    let now = counts.get(result).and_then(Value::as_i64).unwrap_or(0);
    counts.insert(result.to_string(), Value::from(now + n));
}

async fn series(
    s: &AppState,
    key_id: Option<&str>,
    owner: Option<&str>,
    w: &Window,
) -> Result<Vec<UsagePointBody>, ApiError> {
    let rows = s.db.usage_series(key_id, owner, w.from, w.to, w.step).await?;
    let mut buckets: BTreeMap<i64, Map<String, Value>> = BTreeMap::new();
    let mut at = w.from;
    while at < w.to {
        buckets.insert(at, Map::new());
        at += w.step;
    }
    for p in rows {
        if let Some(counts) = buckets.get_mut(&p.at_ms) {
            add(counts, &p.result, p.count);
        }
    }
    Ok(buckets
        .into_iter()
        .map(|(at, counts)| UsagePointBody {
            at: rfc3339(at),
            requests: requests(&counts),
            counts: Value::Object(counts),
        })
        .collect())
}

/// A key's usage over time: per bucket, requests by result and upstream answers by class.
#[utoipa::path(
    get, path = "/v1/keys/{id}/usage", tag = "usage", operation_id = "key_usage",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id"), UsageQuery),
    responses(
        (status = 200, description = "The series, every bucket of the window (zeros included)", body = KeyUsage),
        (status = 400, description = "A bad query parameter", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "No key with this id", body = Error),
    )
)]
pub async fn key_usage(
    State(s): State<AppState>,
    _admin: Admin,
    id: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("malformed key id in the path"))?;
    let q = params(query, &names::<UsageQuery>())?;
    if q.contains_key("owner") {
        return Err(ApiError::bad_request("owner: not a parameter of one key's usage"));
    }
    let w = window(&q)?;
    let key =
        s.db.get(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no key with id {id:?}")))?;
    let points = series(&s, Some(&id), None, &w).await?;
    let body = KeyUsage {
        key_id: id,
        from: rfc3339(w.from),
        to: rfc3339(w.to),
        step: w.step_name.into(),
        last_used_at: key.last_used_ms.map(rfc3339),
        points,
    };
    Ok(answer(StatusCode::OK, &body))
}

/// Totals per owner (or of one owner), the top keys, and the series of the whole.
#[utoipa::path(
    get, path = "/v1/usage", tag = "usage", operation_id = "usage_totals",
    security(("admin_token" = [])),
    params(UsageQuery),
    responses(
        (status = 200, description = "Totals, per owner, top keys and the series", body = UsageTotals),
        (status = 400, description = "A bad query parameter", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
    )
)]
pub async fn totals(
    State(s): State<AppState>,
    _admin: Admin,
    query: Params,
) -> Result<Response, ApiError> {
    let q = params(query, &names::<UsageQuery>())?;
    let w = window(&q)?;
    let owner = q.get("owner").map(String::as_str);
    let rows = s.db.usage_by_key(owner, w.from, w.to).await?;
    let mut total = Map::new();
    let mut by_owner: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut by_key: BTreeMap<String, (Option<String>, Map<String, Value>)> = BTreeMap::new();
    for (key_id, key_owner, result, n) in rows {
        add(&mut total, &result, n);
        if key_id == UNKEYED {
            continue;
        }
        if let Some(o) = &key_owner {
            add(by_owner.entry(o.clone()).or_default(), &result, n);
        }
        if key_id != OTHER {
            let entry = by_key.entry(key_id).or_insert_with(|| (key_owner.clone(), Map::new()));
            add(&mut entry.1, &result, n);
        }
    }
    let mut top: Vec<UsageWho> = by_key
        .into_iter()
        .map(|(key_id, (owner, counts))| UsageWho {
            key_id: Some(key_id),
            owner,
            requests: requests(&counts),
            counts: Value::Object(counts),
        })
        .collect();
    top.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.key_id.cmp(&b.key_id)));
    top.truncate(TOP_KEYS);
    let owners = by_owner
        .into_iter()
        .map(|(o, counts)| UsageWho {
            key_id: None,
            owner: Some(o),
            requests: requests(&counts),
            counts: Value::Object(counts),
        })
        .collect();
    let body = UsageTotals {
        owner: owner.map(str::to_string),
        from: rfc3339(w.from),
        to: rfc3339(w.to),
        step: w.step_name.into(),
        requests: requests(&total),
        counts: Value::Object(total),
        owners,
        top_keys: top,
        points: series(&s, None, owner, &w).await?,
    };
    Ok(answer(StatusCode::OK, &body))
}
