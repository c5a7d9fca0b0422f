//! The one error type of the key service, and its JSON shape.
//!
//! Every error is `{"error": "<reason phrase>", "message": "<why>"}` (plus `"path"` when an
//! entry was refused), written with keygate's spacing so the admin API's 401 is byte for
//! byte the filter's. Database errors are logged here, never returned; those that mean
//! "try again" (a lock or statement timeout, no free connection, SQLite busy) answer 503
//! with `retry-after: 1`, the others 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate::core::config::ConfigError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The JSON path of a refused entry (`cors.allowed_origins[1]`).
    pub path: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), path: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// An entry refused by the filter's compiler, with its path.
    pub fn invalid(e: ConfigError) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: e.reason, path: Some(e.path) }
    }

    pub fn at(path: &str, message: impl Into<String>) -> ApiError {
        ApiError { path: Some(path.into()), ..ApiError::bad_request(message) }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Invalid API key")
    }

    /// A 503: the database did not answer in time; the caller may try again.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the service's log)")
    }

    pub fn body(&self) -> String {
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let mut body =
            format!("{{\"error\": {}, \"message\": {}", quote(reason), quote(&self.message));
        if let Some(path) = &self.path {
            body.push_str(&format!(", \"path\": {}", quote(path)));
        }
        body.push('}');
        body
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A database error, logged and answered as a 500. Statements and their errors never carry a
/// secret: only digests, ids and entries.
fn database(e: &dyn std::fmt::Display) -> ApiError {
    eprintln!("keygate serve: database error: {}", one_line(&e.to_string()));
    ApiError::internal()
}

/// A database error that is worth trying again: which, and what to tell the caller.
fn busy(e: &sqlx::Error) -> Option<&'static str> {
    match e {
        sqlx::Error::PoolTimedOut => Some("no database connection came free in time; try again"),
        sqlx::Error::Database(d) => match d.code().as_deref() {
            // PostgreSQL's lock_not_available (lock_timeout): the write lock is held elsewhere.
            Some("55P03") => Some(
                "the database's write lock is held elsewhere (another replica's write?); try again",
            ),
            // query_canceled (statement_timeout).
            Some("57014") => Some("the database did not answer in time; try again"),
            // SQLite's SQLITE_BUSY and its extended codes: another process holds the file.
            Some(code) if code == "5" || code.parse::<u32>().is_ok_and(|c| c & 0xff == 5) => {
                Some("the database file is locked by another writer; try again")
            }
            _ => None,
        },
        _ => None,
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        match busy(&e) {
            Some(message) => {
                eprintln!("keygate serve: database busy: {}", one_line(&e.to_string()));
                ApiError::unavailable(message)
            }
            None => database(&e),
        }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
            eprintln!("keygate serve: database busy: {}", one_line(&e.to_string()));
            return ApiError::unavailable(
                "the database file is locked by another writer; try again",
            );
        }
        database(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer to a path neither listener serves.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such resource")
}

/// The answer to a method a served path does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

/// A message on one line, for logs and the start-up failure.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_401_is_the_filters_exact_body() {
        assert_eq!(
            ApiError::unauthorized().body(),
            r#"{"error": "Unauthorized", "message": "Invalid API key"}"#
        );
    }

    #[test]
    fn a_refused_entry_names_its_path() {
        let e = ApiError::invalid(ConfigError::new("cors.allowed_origins[1]", "bad \"origin\""));
        assert_eq!(
            e.body(),
            r#"{"error": "Bad Request", "message": "bad \"origin\"", "path": "cors.allowed_origins[1]"}"#
        );
    }
}
