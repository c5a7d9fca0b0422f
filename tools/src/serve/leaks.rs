//! Leak reports: `POST /v1/leaks` from an admin (or `keygate keys leaked`), and
//! `POST /v1/leaks/github` from GitHub's secret scanning, signed by GitHub (`github`).
//!
//! A reported key is compared by its SHA-256 and never stored or logged. A key this service
//! holds is disabled at once (`--on-leak disable`) or given an end a little ahead
//! (`--on-leak expire-in=24h`, so its owner can rotate without an outage), in one change per
//! key that the feed carries to every filter like any revocation. Every report leaves a
//! `leak` audit record with its source, a report naming no key held here included. Acting
//! again on a key already acted on changes nothing, so a repeated or replayed report is
//! harmless.

use crate::serve::admin::{answer, commit, event_data, is_disabled, view_of, Admin, JsonBody};
use crate::serve::api::{Error, LeakAnswer, LeakRecord, LeakReport};
use crate::serve::db::{LeakRow, StoredKey, Touched, Write};
use crate::serve::error::ApiError;
use crate::serve::github::{self, PublicKeys};
use crate::serve::request::check;
use crate::serve::{now_ms, rfc3339, AppState};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use keygate::core::hex;
use keygate::core::keytable::sha256;
use keygate::core::timestamp::parse_rfc3339;
use serde_json::Value;

/// The longest `source` a report may give.
pub const MAX_SOURCE: usize = 2_048;
/// The longest key a report may name (far longer than any key a filter accepts).
const MAX_KEY: usize = 4_096;

/// What a leak does to a key this service holds (`--on-leak`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLeak {
    /// Disabled at once: every request with it is refused from the next feed poll on.
    Disable,
    /// Its end brought forward to this many seconds after the report (never pushed back).
    ExpireIn(i64),
}

impl OnLeak {
    /// `disable` or `expire-in=DURATION` (`90s`, `30m`, `24h`, `7d`).
    pub fn parse(text: &str) -> Result<OnLeak, String> {
        if text == "disable" {
            return Ok(OnLeak::Disable);
        }
        let how = "expected `disable` or `expire-in=DURATION` (e.g. expire-in=24h)";
        let Some(duration) = text.strip_prefix("expire-in=") else { return Err(how.into()) };
        let (number, unit) = duration.split_at(duration.len().saturating_sub(1));
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(how.into()),
        };
        match number.parse::<i64>() {
            Ok(n) if n > 0 && n <= 366 * 86_400 / scale => Ok(OnLeak::ExpireIn(n * scale)),
            _ => Err(format!("{how}, between 1 second and 366 days")),
        }
    }
}

/// How leak reports are handled: the action, and GitHub's public keys (`--github-keys`).
pub struct Settings {
    pub on_leak: OnLeak,
    pub github: Option<PublicKeys>,
}

pub fn record(row: LeakRow) -> LeakRecord {
    LeakRecord { time: row.at, reporter: row.reporter, source: row.source, action: row.action }
}

/// Acts on one reported key this service holds, in `w`'s current change: what was done, and
/// the key's end afterwards.
async fn act(
    w: &mut Write<'_>,
    key: &StoredKey,
    on_leak: OnLeak,
    reporter: &str,
    source: &str,
) -> Result<LeakAnswer, ApiError> {
    let mut entry = view_of(key);
    let current_end = entry.get("expires_at").and_then(Value::as_str).map(parse_rfc3339);
    let action = if is_disabled(&key.entry) {
        "none"
    } else {
        match on_leak {
            OnLeak::Disable => {
                entry["disabled"] = Value::Bool(true);
                "disabled"
            }
            OnLeak::ExpireIn(seconds) => {
                let end = now_ms() + seconds * 1000;
                if matches!(current_end, Some(Ok(t)) if t <= end) {
                    "none"
                } else {
                    entry["expires_at"] = Value::from(rfc3339(end));
                    "expires"
                }
            }
        }
    };
    let changed = check(entry)?;
    if action != "none" {
        w.update(&changed.row(&key.sha256)).await?;
        w.touched(&Touched { sha256: key.sha256.clone(), origins: changed.origins.clone() })
            .await?;
    }
    w.leak(&key.id, reporter, source, action).await?;
    w.audit_leak(reporter, &key.id, source).await?;
    let expires_at = changed.expires_ms.map(rfc3339);
    let mut data = event_data(&key.id, &changed.json);
    data["source"] = Value::from(source);
    data["reporter"] = Value::from(reporter);
    data["action"] = Value::from(action);
    w.event("key.leaked", data).await?;
    Ok(LeakAnswer { key_id: key.id.clone(), action: action.into(), expires_at })
}

fn text_field<'a>(body: &'a Value, field: &str, max: usize) -> Result<&'a str, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s),
        _ => Err(ApiError::at(field, format!("expected a string of 1-{max} bytes"))),
    }
}

/// Report a leaked key: disabled at once (or ending soon, with `--on-leak expire-in=`).
#[utoipa::path(
    post, path = "/v1/leaks", tag = "leaks", operation_id = "report_leak",
    security(("admin_token" = [])),
    request_body = LeakReport,
    responses(
        (status = 200, description = "The key this service holds, and what was done", body = LeakAnswer),
        (status = 400, description = "Malformed JSON, or `key` or `source` missing or too long", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "No key held here matches (the report is audited all the same)", body = Error),
        (status = 413, description = "Body over 1 MiB", body = Error),
        (status = 415, description = "Body not JSON", body = Error),
    )
)]
pub async fn report(
    State(s): State<AppState>,
    admin: Admin,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    if body.as_object().is_some_and(|o| o.keys().any(|k| k != "key" && k != "source")) {
        // Not named: it could be a pasted key.
        return Err(ApiError::bad_request("unknown field; expected `key` and `source`"));
    }
    let key = text_field(&body, "key", MAX_KEY)?;
    let source = text_field(&body, "source", MAX_SOURCE)?;
    let digest = hex::encode(&sha256(key.as_bytes()));
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    let Some(held) = w.by_digest(&digest).await? else {
        w.audit_leak(&admin.0, "", source).await?;
        commit(&s, w, "leak (no key held here)", "-", &admin).await?;
        return Err(ApiError::not_found("no key held here matches the reported key"));
    };
    let done = act(&mut w, &held, s.leaks.on_leak, &admin.0, source).await?;
    commit(&s, w, &format!("leak ({})", done.action), &held.id, &admin).await?;
    Ok(answer(StatusCode::OK, &done))
}

/// GitHub secret scanning's report of keys found in public content, signed by GitHub.
#[utoipa::path(
    post, path = "/v1/leaks/github", tag = "leaks", operation_id = "github_leak_report",
    security(("github_signature" = [])),
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "Which of GitHub's keys signed the body"),
    ),
    request_body = Vec<crate::serve::api::GithubReport>,
    responses(
        (status = 200, description = "One label per report", body = Vec<crate::serve::api::GithubLabel>),
        (status = 400, description = "A body that is not GitHub's report array", body = Error),
        (status = 401, description = "A missing, unknown or bad signature: nothing was done", body = Error),
        (status = 413, description = "Body over 1 MiB", body = Error),
        (status = 503, description = "Not enabled: the service was started without `--github-keys`", body = Error),
    )
)]
pub async fn github(State(s): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let Some(keys) = &s.leaks.github else {
        return Err(ApiError::unavailable(
            "GitHub leak reports are not enabled: start keygate serve with --github-keys FILE",
        ));
    };
    let headers = request.headers().clone();
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let body = axum::body::to_bytes(request.into_body(), crate::serve::admin::BODY_LIMIT)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB"))?;
    keys.verify(
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
        &body,
    )
    .map_err(|refused| {
        eprintln!("keygate serve: a GitHub leak report refused: {refused}");
        ApiError::new(StatusCode::UNAUTHORIZED, refused.to_string())
    })?;
    let reports = github::parse_reports(&body).map_err(ApiError::bad_request)?;
    let mut labels = Vec::with_capacity(reports.len());
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    let mut acted = 0usize;
    for (i, report) in reports.iter().enumerate() {
        if i > 0 {
            w.next_change().await?;
        }
        let source = github_source(report);
        let digest = hex::encode(&sha256(report.token.as_bytes()));
        let known = match w.by_digest(&digest).await? {
            Some(held) => {
                act(&mut w, &held, s.leaks.on_leak, "github", &source).await?;
                acted += 1;
                true
            }
            None => {
                w.audit_leak("github", "", &source).await?;
                false
            }
        };
        labels.push(github::label(report, known));
    }
    let seq = w.seq;
    w.commit().await?;
    s.changed.notify_one();
    eprintln!(
        "keygate serve: GitHub leak report: {} tokens, {acted} keys held here (changes to {seq})",
        reports.len()
    );
    Ok(answer(StatusCode::OK, &labels))
}

/// Where GitHub saw a token, for the audit record: its URL, with the kind of content.
fn github_source(report: &github::Report) -> String {
    let text = match (report.url.is_empty(), report.source.is_empty()) {
        (false, false) => format!("{} ({})", report.url, report.source),
        (false, true) => report.url.clone(),
        (true, false) => format!("github ({})", report.source),
        (true, true) => "github".into(),
    };
    text.chars().take(MAX_SOURCE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_leak_takes_disable_or_a_duration() {
        assert_eq!(OnLeak::parse("disable"), Ok(OnLeak::Disable));
        assert_eq!(OnLeak::parse("expire-in=24h"), Ok(OnLeak::ExpireIn(86_400)));
        assert_eq!(OnLeak::parse("expire-in=90s"), Ok(OnLeak::ExpireIn(90)));
        assert_eq!(OnLeak::parse("expire-in=30m"), Ok(OnLeak::ExpireIn(1_800)));
        assert_eq!(OnLeak::parse("expire-in=7d"), Ok(OnLeak::ExpireIn(604_800)));
        for bad in [
            "",
            "expire",
            "expire-in=",
            "expire-in=0h",
            "expire-in=-1h",
            "expire-in=24",
            "expire-in=1w",
            "expire-in=367d",
            "disabled",
        ] {
            assert!(OnLeak::parse(bad).is_err(), "{bad:?}");
        }
    }
}
