//! The one error type of the key service, and its JSON shape.
//!
//! Every error is `{"error": "<reason phrase>", "message": "<why>"}` (plus `"path"` when an
//! entry was refused), written with keygate's spacing so the admin API's 401 is byte for
//! byte the filter's. Database errors are logged here, never returned.

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

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        database(&e)
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
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
