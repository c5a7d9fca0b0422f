//! The key console: one page (HTML, CSS and JavaScript from `tools/console/`, embedded in
//! the binary) served at `/` on the admin listener. It holds no logic of its own that
//! matters for security: every action is a call to the admin API with the admin token the
//! person signed in with.
//!
//! Two guards cover the whole admin listener: [`headers`] puts a strict
//! `Content-Security-Policy` and its companions on every answer, and [`same_origin`]
//! refuses a cross-site request to the admin API with 403 before any handler runs. The
//! admin API is not a CORS endpoint: it never sends `Access-Control-*` headers, so a page
//! on another origin cannot read an answer, and thanks to the guard cannot make the service
//! act either (a form post or a `no-cors` fetch would otherwise still reach a handler).

use crate::serve::error::ApiError;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const ICON: &str = include_str!("../../console/favicon.svg");

/// The page loads its own script, style and icon, talks to its own origin, and nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'none'";

/// The console's routes; `admin::api` merges them beside the API. They need no admin
/// token: the page asks the person for one.
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(script))
        .routes(routes!(style))
        .routes(routes!(icon))
}

/// The key console.
#[utoipa::path(get, path = "/", tag = "console", operation_id = "console_page",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The console's script.
#[utoipa::path(get, path = "/console.js", tag = "console", operation_id = "console_script",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)))]
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console.css", tag = "console", operation_id = "console_style",
    responses((status = 200, description = "The style sheet", content_type = "text/css", body = String)))]
async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The console's icon.
#[utoipa::path(get, path = "/favicon.svg", tag = "console", operation_id = "console_icon",
    // Its type named in words: code generators read no image/svg+xml schema.
    responses((status = 200, description = "The icon, `image/svg+xml`")))]
async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Every answer of the admin listener, page, assets and API alike: no framing, no MIME
/// sniffing, no referrer, nothing kept in a cache (an answer may carry a new secret).
pub async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Refuses, with 403, a call to the admin API (`/v1/...`) that a browser made for a page
/// of another origin: an `Origin` header other than this listener's own origin
/// (`http://` or `https://` and the `Host` the request was sent to), or `Sec-Fetch-Site`
/// other than `same-origin` or `none`. Clients that are not browsers (curl, the CLI)
/// send neither header and are not affected. The page itself may be opened from anywhere.
pub async fn same_origin(request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/v1/") {
        let host = request.uri().authority().map(|a| a.as_str().to_string());
        if let Err(why) = check_same_origin(request.headers(), host.as_deref()) {
            return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
        }
    }
    next.run(request).await
}

fn check_same_origin(headers: &HeaderMap, authority: Option<&str>) -> Result<(), &'static str> {
    const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err("cross-site requests to the admin API are refused");
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    // HTTP/1.1 names the host in `Host`, HTTP/2 in `:authority` (the URI's authority).
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority);
    let same = match (origin.to_str(), host) {
        (Ok(origin), Some(host)) => ["http://", "https://"].iter().any(|scheme| {
            origin.len() == scheme.len() + host.len()
                && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                && origin[scheme.len()..].eq_ignore_ascii_case(host)
        }),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err("cross-origin requests to the admin API are refused")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_the_listeners_own_origin_may_call_the_api() {
        let host = ("host", "127.0.0.1:9100");
        assert!(check_same_origin(&with(&[host]), None).is_ok(), "curl, the CLI");
        assert!(
            check_same_origin(&with(&[host, ("origin", "http://127.0.0.1:9100")]), None).is_ok()
        );
        assert!(
            check_same_origin(&with(&[host, ("origin", "HTTPS://127.0.0.1:9100")]), None).is_ok()
        );
        assert!(check_same_origin(
            &with(&[host, ("origin", "http://127.0.0.1:9100"), ("sec-fetch-site", "same-origin")]),
            None
        )
        .is_ok());
        for origin in [
            "https://evil.example",
            "http://127.0.0.1:9101",
            "http://127.0.0.1:91000",
            "http://127.0.0.1",
            "null",
        ] {
            let h = with(&[host, ("origin", origin)]);
            assert!(check_same_origin(&h, None).is_err(), "{origin}");
        }
        assert!(check_same_origin(&with(&[host, ("sec-fetch-site", "cross-site")]), None).is_err());
        assert!(check_same_origin(&with(&[host, ("sec-fetch-site", "same-site")]), None).is_err());
        assert!(check_same_origin(&with(&[("origin", "http://a.example")]), None).is_err());
        let h2 = with(&[("origin", "http://a.example:9100")]);
        assert!(check_same_origin(&h2, Some("a.example:9100")).is_ok(), "HTTP/2 :authority");
    }
}
