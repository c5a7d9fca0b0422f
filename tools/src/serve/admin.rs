//! The admin API: `/v1/keys`, `/v1/owners` (in `owners`), `/v1/audit` and `/v1/export`, each call authorized by an
//! admin token whose SHA-256 is in `KEYGATE_ADMIN_TOKEN_SHA256`, and its OpenAPI document at
//! `/v1/openapi.json`. The same listener serves the key console at `/` (see `console`),
//! which also refuses cross-site calls to the API.
//!
//! Every route is registered once, in [`api`], with its handler's `#[utoipa::path]`: the
//! router and the document are both made from that one list, so neither has a route the
//! other lacks.
//!
//! Handlers read parse → check (with the filter's own compiler) → store → answer. An entry
//! as an admin sees it is the stored entry with its `name` after the `id`; the digest and
//! the secret are never part of it (the secret is in the one 201 that creates it).

use crate::secret::{new_secret, random_id};
use crate::serve::api::{
    names, ApiDoc, AuditPage, AuditQuery, AuditRecord, Created, EntryPatch, Error, Export, KeyPage,
    ListQuery, NewKey, Rotation, Shown,
};
use crate::serve::db::{KeyRow, StoredKey, Touched, Write};
use crate::serve::error::{json, method_not_allowed, not_found, ApiError};
use crate::serve::metrics::{self, Op};
use crate::serve::request::{check, json_body, patched, rotation, with_id, Checked};
use crate::serve::{console, leaks, owners, usage_api};
use crate::serve::{now_ms, rfc3339, AppState};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Router;
use keygate::core::hex;
use keygate::core::keytable::sha256;
use keygate::core::parse::looks_like_a_field;
use keygate::core::timestamp::parse_rfc3339;
use keygate::core::token::bearer_key;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 1 << 20;

/// Every route of the admin listener, once. One `routes!` a path: it serves each handler
/// named in it on every path named in it.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(rotate))
        .routes(routes!(owners::list_owners))
        .routes(routes!(owners::set_owner, owners::show_owner, owners::delete_owner))
        .routes(routes!(usage_api::key_usage))
        .routes(routes!(usage_api::totals))
        .routes(routes!(leaks::report))
        .routes(routes!(leaks::github))
        .routes(routes!(audit))
        .routes(routes!(export))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics::scrape))
        .merge(console::routes())
}

/// The admin API's OpenAPI 3.1 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Every `(METHOD, path)` the admin listener serves (and HEAD wherever GET), read from the
/// one list in [`api`] that the router is built from.
pub fn routes() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for (path, item) in openapi().paths.paths {
        let methods = [
            ("GET", item.get.is_some()),
            ("PUT", item.put.is_some()),
            ("POST", item.post.is_some()),
            ("DELETE", item.delete.is_some()),
            ("OPTIONS", item.options.is_some()),
            ("HEAD", item.head.is_some()),
            ("PATCH", item.patch.is_some()),
            ("TRACE", item.trace.is_some()),
        ];
        for (method, served) in methods {
            if served {
                all.push((method.to_string(), path.clone()));
            }
        }
    }
    all
}

pub fn router(state: AppState) -> Router {
    let (routes, _document) = api().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(console::same_origin))
        .layer(middleware::from_fn(console::headers))
}

/// The admin who made the call: the first 8 hex characters of their token's digest.
pub struct Admin(pub(super) String);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Admin, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(ApiError::unauthorized)?;
        let token = bearer_key(header.as_bytes()).ok_or_else(ApiError::unauthorized)?;
        let digest = sha256(token);
        // Compared by digest, every byte of every digest, so timing tells nothing.
        let known = s.admins.iter().fold(false, |found, d| {
            found | (d.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
        });
        let client = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if known {
            if let Some(ip) = client {
                logins::succeeded(ip);
            }
            return Ok(Admin(hex::encode(&digest[..4])));
        }
        // A wrong token: counted, and answered only after this address's backoff. A correct
        // one above is never delayed, whatever the address's failures.
        match client.map(logins::failed) {
            Some(Err(wait)) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed admin-token attempts from this address; try again in {} s",
                    wait.as_secs().max(1)
                ),
            )),
            Some(Ok(delay)) => {
                tokio::time::sleep(delay).await;
                Err(ApiError::unauthorized())
            }
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// Failed admin-token attempts: a bounded per-address backoff and a process-wide counter.
///
/// The first [`FREE`](logins::FREE) consecutive failures from an address are answered at
/// once; each later one waits [`BASE`](logins::BASE) doubled per failure, up to
/// [`CAP`](logins::CAP), and an address's failures are answered one after another (parallel
/// connections do not guess faster). A failure that would wait longer than
/// [`MAX_WAIT`](logins::MAX_WAIT) is answered 429 at once. A correct token resets its
/// address. The table holds at most [`TABLE`](logins::TABLE) addresses (the one idle
/// longest makes room) and forgets an address after [`FORGET`](logins::FORGET).
pub mod logins {
    use crate::serve::listen::Every;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{LazyLock, Mutex};
    use std::time::{Duration, Instant};

    pub const FREE: u32 = 3;
    pub const BASE: Duration = Duration::from_millis(250);
    pub const CAP: Duration = Duration::from_secs(8);
    pub const MAX_WAIT: Duration = Duration::from_secs(15);
    pub const TABLE: usize = 4_096;
    pub const FORGET: Duration = Duration::from_secs(15 * 60);

    struct Failures {
        count: u32,
        /// This address's next failure is not answered before this.
        next: Instant,
        last: Instant,
    }

    static FAILURES: LazyLock<Mutex<HashMap<IpAddr, Failures>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    static FAILED: AtomicU64 = AtomicU64::new(0);
    static LOG: LazyLock<Every> = LazyLock::new(|| Every::new(Duration::from_secs(10)));

    /// Failed admin-token attempts since the service started (`keygate_admin_token_failures_total`).
    pub fn failed_total() -> u64 {
        FAILED.load(Ordering::Relaxed)
    }

    /// The delay after the `count`-th consecutive failure.
    pub fn delay(count: u32) -> Duration {
        match count.checked_sub(FREE + 1) {
            None => Duration::ZERO,
            Some(doublings) => BASE.saturating_mul(1 << doublings.min(16)).min(CAP),
        }
    }

    /// A failure from `ip`: how long to hold its 401, or `Err` (how long to wait) for a 429.
    pub fn failed(ip: IpAddr) -> Result<Duration, Duration> {
        let total = FAILED.fetch_add(1, Ordering::Relaxed) + 1;
        if LOG.now() {
            eprintln!(
                "keygate serve: {total} failed admin-token attempts so far (the latest from {ip})"
            );
        }
        let now = Instant::now();
        let mut table = FAILURES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !table.contains_key(&ip) && table.len() >= TABLE {
            table.retain(|_, f| now.duration_since(f.last) < FORGET);
            if table.len() >= TABLE {
                if let Some(oldest) = table.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip) {
                    table.remove(&oldest);
                }
            }
        }
        let f = table.entry(ip).or_insert(Failures { count: 0, next: now, last: now });
        if now.duration_since(f.last) >= FORGET {
            f.count = 0;
        }
        let at = f.next.max(now) + delay(f.count + 1);
        if at - now > MAX_WAIT {
            return Err(at - now - MAX_WAIT);
        }
        f.count += 1;
        f.next = at;
        f.last = now;
        Ok(at - now)
    }

    /// A correct token from `ip`: its failures are forgotten.
    pub fn succeeded(ip: IpAddr) {
        let mut table = FAILURES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        table.remove(&ip);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn delays_grow_from_the_fourth_failure_up_to_the_cap() {
            let d: Vec<u64> = (1..=10).map(|n| delay(n).as_millis() as u64).collect();
            assert_eq!(d, [0, 0, 0, 250, 500, 1000, 2000, 4000, 8000, 8000]);
            assert_eq!(delay(u32::MAX), CAP);
        }

        #[test]
        fn failures_queue_per_address_and_a_success_resets() {
            let ip: IpAddr = [192, 0, 2, 7].into();
            let waits: Vec<Duration> = (0..5).filter_map(|_| failed(ip).ok()).collect();
            assert_eq!(waits.len(), 5);
            assert!(
                waits[3] >= Duration::from_millis(240) && waits[4] >= Duration::from_millis(740)
            );
            // Failures not yet answered queue: the next would wait past MAX_WAIT soon.
            let more: Vec<_> = (0..20).map(|_| failed(ip)).collect();
            assert!(more.iter().any(Result::is_err));
            succeeded(ip);
            assert_eq!(failed(ip), Ok(Duration::ZERO));
            assert!(failed_total() >= 26);
        }
    }
}

/// A JSON request body: `application/json` (or `application/merge-patch+json`), at most
/// [`BODY_LIMIT`] bytes, well-formed.
pub struct JsonBody(pub(super) Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<JsonBody, ApiError> {
        let content_type =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if mime != "application/json" && mime != "application/merge-patch+json" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected content-type: application/json",
            ));
        }
        let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB");
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
            return Err(too_large());
        }
        let bytes =
            axum::body::to_bytes(req.into_body(), BODY_LIMIT).await.map_err(|_| too_large())?;
        Ok(JsonBody(json_body(&bytes)?))
    }
}

type IdPath = Result<Path<String>, PathRejection>;
pub(super) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn id_of(path: IdPath) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|_| ApiError::bad_request("malformed key id in the path"))
}

/// The query parameters, each one of the `allowed` (the documented ones).
pub(super) fn params(
    query: Params,
    allowed: &[String],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(mut query) = query.map_err(|_| ApiError::bad_request("malformed query string"))?;
    if let Some(other) = query.keys().find(|k| !allowed.contains(k)) {
        // Named only when it looks like a mistyped one, never a pasted key (as in entries).
        let named = if looks_like_a_field(other) { format!(" {other:?}") } else { String::new() };
        return Err(ApiError::bad_request(format!("unknown query parameter{named}")));
    }
    // `?owner=&limit=&after=` as a form sends it: an empty value is no value.
    query.retain(|_, v| !v.is_empty());
    Ok(query)
}

fn no_such_key(id: &str) -> ApiError {
    ApiError::not_found(format!("no key with id {id:?}"))
}

fn duplicate(id: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, format!("a key with id {id:?} already exists"))
}

// Here, beside the handlers that store it, so that `request` knows nothing of the database.
impl Checked {
    /// What `keys` and `key_origins` hold for this entry under `sha256`.
    pub(super) fn row<'a>(&'a self, sha256: &'a str) -> KeyRow<'a> {
        KeyRow {
            id: &self.id,
            sha256,
            name: self.name.as_deref(),
            owner: self.owner.as_deref(),
            entry: &self.json,
            origins: &self.origins,
            expires_ms: self.expires_ms,
        }
    }
}

/// The origins a stored entry lists (stored entries always compile).
fn origins_of(entry: &str) -> Vec<String> {
    let doc = serde_json::from_str(entry).unwrap_or(Value::Null);
    check(doc).map(|c| c.origins).unwrap_or_default()
}

fn union(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    let mut all = a;
    for o in b {
        if !all.contains(&o) {
            all.push(o);
        }
    }
    all
}

/// `key_` and 16 random hex characters.
fn new_id() -> Result<String, ApiError> {
    random_id("key_").map_err(|e| {
        eprintln!("keygate serve: {e}");
        ApiError::internal()
    })
}

fn secret() -> Result<(String, String), ApiError> {
    let secret = new_secret().map_err(|e| {
        eprintln!("keygate serve: {e}");
        ApiError::internal()
    })?;
    let digest = hex::encode(&sha256(secret.as_bytes()));
    Ok((secret, digest))
}

/// The entry as an admin sees it: the stored entry with `name` after `id`.
pub(super) fn view(name: Option<&str>, entry: &str) -> Value {
    let stored: Map<String, Value> = serde_json::from_str(entry).unwrap_or_default();
    let mut out = Map::new();
    for (k, v) in stored {
        let after_id = k == "id";
        out.insert(k, v);
        if let (true, Some(name)) = (after_id, name) {
            out.insert("name".into(), Value::from(name));
        }
    }
    Value::Object(out)
}

/// A stored key as an admin sees it: its entry, and when it was last used (`null`: never,
/// or no filter counts usage). `last_used_at` is read-only: `request::check` drops it.
pub(super) fn view_of(k: &StoredKey) -> Value {
    let mut entry = view(k.name.as_deref(), &k.entry);
    if let Some(map) = entry.as_object_mut() {
        map.insert(
            "last_used_at".into(),
            k.last_used_ms.map(rfc3339).map_or(Value::Null, Value::from),
        );
    }
    entry
}

/// What every key event says of its key: its id, owner and end (as the entry has them).
pub(super) fn event_data(id: &str, entry: &str) -> Value {
    let stored: Map<String, Value> = serde_json::from_str(entry).unwrap_or_default();
    serde_json::json!({
        "key_id": id,
        "owner": stored.get("owner"),
        "expires_at": stored.get("expires_at"),
    })
}

fn with_how(mut data: Value, how: &str) -> Value {
    data["how"] = Value::from(how);
    data
}

/// Whether a stored entry is disabled.
pub(super) fn is_disabled(entry: &str) -> bool {
    let stored: Map<String, Value> = serde_json::from_str(entry).unwrap_or_default();
    stored.get("disabled") == Some(&Value::Bool(true))
}

pub fn answer(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => json(status, text),
        Err(e) => {
            eprintln!("keygate serve: cannot write an answer: {e}");
            ApiError::internal().into_response()
        }
    }
}

/// Commits an admin's change, then wakes the ECDS writer and logs it (never a secret).
pub(super) async fn commit(
    s: &AppState,
    w: Write<'_>,
    action: &str,
    id: &str,
    admin: &Admin,
) -> Result<(), ApiError> {
    let seq = w.seq;
    metrics::timed(Op::Write, w.commit()).await?;
    s.changed.notify_one();
    eprintln!("keygate serve: {action} {id} by admin {} (change {seq})", admin.0);
    Ok(())
}

/// Create a key. Its secret is in this answer only: the service stores its SHA-256.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", operation_id = "create_key",
    security(("admin_token" = [])),
    request_body = NewKey,
    responses(
        (status = 201, description = "Created", body = Created),
        (status = 400, description = "Malformed JSON, or an entry the filter's compiler refuses", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 409, description = "The id is taken", body = Error),
        (status = 413, description = "Body over 1 MiB", body = Error),
        (status = 415, description = "Body not JSON", body = Error),
    )
)]
async fn create(
    State(s): State<AppState>,
    admin: Admin,
    JsonBody(doc): JsonBody,
) -> Result<Response, ApiError> {
    let key = check(with_id(doc, new_id)?)?;
    let (secret, digest) = secret()?;
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    if w.get(&key.id).await?.is_some() {
        return Err(duplicate(&key.id));
    }
    w.insert(&key.row(&digest)).await?;
    w.touched(&Touched { sha256: digest, origins: key.origins.clone() }).await?;
    w.audit(&admin.0, "create", &key.id, None).await?;
    w.event("key.created", event_data(&key.id, &key.json)).await?;
    commit(&s, w, "create", &key.id, &admin).await?;
    let body = Created { key: secret, entry: view(key.name.as_deref(), &key.json) };
    Ok(answer(StatusCode::CREATED, &body))
}

/// List keys, one page at a time.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys", operation_id = "list_keys",
    security(("admin_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = KeyPage),
        (status = 400, description = "A bad query parameter", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
    )
)]
async fn list(
    State(s): State<AppState>,
    _admin: Admin,
    query: Params,
) -> Result<Response, ApiError> {
    let q = params(query, &names::<ListQuery>())?;
    let limit = match q.get("limit") {
        None => 100,
        Some(n) => n
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit: expected 1-1000"))?,
    };
    let after = q.get("after").map_or("", String::as_str);
    let unused_since = match q.get("unused_since") {
        None => None,
        // Use is kept to the minute: a key used in the minute of `unused_since` was used since.
        Some(t) => Some(parse_rfc3339(t).map(|t| t - t.rem_euclid(60_000)).map_err(|_| {
            ApiError::bad_request(
                "unused_since: expected an RFC 3339 time such as 2026-09-01T00:00:00Z",
            )
        })?),
    };
    let owner = q.get("owner").map(String::as_str);
    let mut rows = s.db.list(owner, unused_since, after, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|k| k.id.clone())
    } else {
        None
    };
    let leaked = s.db.leaked_among(&rows).await?;
    let entries: Vec<Value> = rows.iter().map(view_of).collect();
    Ok(answer(StatusCode::OK, &KeyPage { entries, leaked, next }))
}

/// Show one key.
#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "keys", operation_id = "show_key",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key", body = Shown),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "No key with this id", body = Error),
    )
)]
async fn show(State(s): State<AppState>, _admin: Admin, id: IdPath) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let key = s.db.get(&id).await?.ok_or_else(|| no_such_key(&id))?;
    let leaks = s.db.leaks_of(&id).await?.into_iter().map(leaks::record).collect();
    Ok(answer(StatusCode::OK, &Shown { entry: view_of(&key), leaks }))
}

/// Change a key: a JSON merge patch of its entry, checked again like a new one.
#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "keys", operation_id = "update_key",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id")),
    request_body(
        content = EntryPatch,
        description = "`application/merge-patch+json` is accepted too",
    ),
    responses(
        (status = 200, description = "The key as changed", body = Shown),
        (status = 400, description = "Malformed JSON, a changed id, or an entry the filter's compiler refuses", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "No key with this id", body = Error),
        (status = 413, description = "Body over 1 MiB", body = Error),
        (status = 415, description = "Body not JSON", body = Error),
    )
)]
async fn update(
    State(s): State<AppState>,
    admin: Admin,
    id: IdPath,
    JsonBody(patch): JsonBody,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    let old = w.get(&id).await?.ok_or_else(|| no_such_key(&id))?;
    let key = patched(view_of(&old), &id, &patch)?;
    w.update(&key.row(&old.sha256)).await?;
    let origins = union(origins_of(&old.entry), key.origins.clone());
    w.touched(&Touched { sha256: old.sha256.clone(), origins }).await?;
    w.audit(&admin.0, "update", &id, None).await?;
    if !is_disabled(&old.entry) && is_disabled(&key.json) {
        w.event("key.revoked", with_how(event_data(&id, &key.json), "disabled")).await?;
    }
    commit(&s, w, "update", &id, &admin).await?;
    Ok(answer(
        StatusCode::OK,
        &Shown { entry: view(key.name.as_deref(), &key.json), leaks: Vec::new() },
    ))
}

/// Revoke a key: delete it. The filter refuses it once its change feed has seen this.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys", operation_id = "revoke_key",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "No key with this id", body = Error),
    )
)]
async fn remove(State(s): State<AppState>, admin: Admin, id: IdPath) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    let old = w.get(&id).await?.ok_or_else(|| no_such_key(&id))?;
    w.delete(&id).await?;
    w.touched(&Touched { sha256: old.sha256.clone(), origins: origins_of(&old.entry) }).await?;
    w.audit(&admin.0, "delete", &id, None).await?;
    w.event("key.revoked", with_how(event_data(&id, &old.entry), "deleted")).await?;
    commit(&s, w, "delete", &id, &admin).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Rotate a key: a successor with the same settings and a new id, and the old key's
/// `expires_at` brought forward to now + `grace_seconds` (never lengthened).
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "keys", operation_id = "rotate_key",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The id of the key to replace")),
    request_body = Rotation,
    responses(
        (status = 201, description = "The successor", body = Created),
        (status = 400, description = "Malformed JSON or a bad grace period or id", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "No key with this id", body = Error),
        (status = 409, description = "The successor's id is taken", body = Error),
        (status = 413, description = "Body over 1 MiB", body = Error),
        (status = 415, description = "Body not JSON", body = Error),
    )
)]
async fn rotate(
    State(s): State<AppState>,
    admin: Admin,
    id: IdPath,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let Rotation { grace_seconds: grace, id: successor_id } = rotation(&body)?;
    let now = now_ms();
    let mut w = s.db.begin_write(rfc3339(now)).await?;
    let old = w.get(&id).await?.ok_or_else(|| no_such_key(&id))?;
    let stored = view_of(&old);

    // The successor: the same settings (and name), a new id.
    let successor_id = match successor_id {
        Some(id) => id,
        None => new_id()?,
    };
    let mut successor = stored.clone();
    if let Some(map) = successor.as_object_mut() {
        map.insert("id".into(), Value::from(successor_id.clone()));
    }
    let successor = check(successor)?;
    if w.get(&successor.id).await?.is_some() {
        return Err(duplicate(&successor.id));
    }

    // The old key ends after the grace period, or earlier if it already did.
    let mut ending = stored;
    let end = now + grace * 1000;
    let current_end = ending.get("expires_at").and_then(Value::as_str).map(parse_rfc3339);
    if !matches!(current_end, Some(Ok(t)) if t <= end) {
        if let Some(map) = ending.as_object_mut() {
            map.insert("expires_at".into(), Value::from(rfc3339(end)));
        }
    }
    let ending = check(ending).map_err(|e| ApiError::at("grace_seconds", e.message))?;

    let (secret, digest) = secret()?;
    w.update(&ending.row(&old.sha256)).await?;
    w.insert(&successor.row(&digest)).await?;
    w.touched(&Touched { sha256: old.sha256.clone(), origins: ending.origins.clone() }).await?;
    w.touched(&Touched { sha256: digest, origins: successor.origins.clone() }).await?;
    w.audit(&admin.0, "rotate", &id, Some(&successor.id)).await?;
    let mut data = event_data(&id, &ending.json);
    data["successor_id"] = Value::from(successor.id.clone());
    w.event("key.rotated", data).await?;
    commit(&s, w, "rotate", &id, &admin).await?;
    let body = Created { key: secret, entry: view(successor.name.as_deref(), &successor.json) };
    Ok(answer(StatusCode::CREATED, &body))
}

/// Who changed what, newest first.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit", operation_id = "audit_log",
    security(("admin_token" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "One page", body = AuditPage),
        (status = 400, description = "A bad query parameter", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
    )
)]
async fn audit(
    State(s): State<AppState>,
    _admin: Admin,
    query: Params,
) -> Result<Response, ApiError> {
    let q = params(query, &names::<AuditQuery>())?;
    let limit = match q.get("limit") {
        None => 100,
        Some(n) => n
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit: expected 1-1000"))?,
    };
    let before = match q.get("after") {
        None => i64::MAX,
        Some(n) => n.parse::<i64>().map_err(|_| {
            ApiError::bad_request("after: expected the next value of a previous answer")
        })?,
    };
    let rows = s.db.audit(before, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = if more { rows.last().map(|r| r.seq.to_string()) } else { None };
    let entries = rows
        .iter()
        .map(|r| AuditRecord {
            seq: r.seq,
            time: r.at.clone(),
            admin: r.admin.clone(),
            action: r.action.clone(),
            key_id: r.key_id.clone(),
            owner: r.owner.clone(),
            successor: r.successor.clone(),
            source: r.source.clone(),
        })
        .collect();
    Ok(answer(StatusCode::OK, &AuditPage { entries, next }))
}

/// The whole table as a plugin configuration, with digests (never a secret).
#[utoipa::path(
    get, path = "/v1/export", tag = "export", operation_id = "export_keys",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A plugin configuration, one key a line", body = Export),
        (status = 401, description = "No or unknown admin token", body = Error),
    )
)]
async fn export(State(s): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let keys = s.db.all().await?;
    Ok(json(StatusCode::OK, export_json(&keys)))
}

/// This document. It needs no admin token: it describes the API and holds no key, digest
/// or setting of this service, so it tells a caller nothing the source does not.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "meta", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
)]
async fn openapi_json() -> Result<Response, ApiError> {
    static DOCUMENT: OnceLock<Result<String, String>> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| openapi().to_pretty_json().map_err(|e| e.to_string()));
    match document {
        Ok(text) => Ok(json(StatusCode::OK, text.clone())),
        Err(e) => {
            eprintln!("keygate serve: cannot write the OpenAPI document: {e}");
            Err(ApiError::internal())
        }
    }
}

/// The whole table as a plugin configuration (`{"keys": [...]}` with digests), one key a line.
pub fn export_json(keys: &[StoredKey]) -> String {
    let lines: Vec<String> = keys.iter().map(|k| with_digest(k).to_string()).collect();
    if lines.is_empty() {
        return "{\"keys\": []}\n".into();
    }
    format!("{{\"keys\": [\n  {}\n]}}\n", lines.join(",\n  "))
}

/// A stored entry with `sha256` after its `id`: a plugin configuration key entry.
pub fn with_digest(k: &StoredKey) -> Value {
    let stored: Map<String, Value> = serde_json::from_str(&k.entry).unwrap_or_default();
    let mut out = Map::new();
    for (field, v) in stored {
        let after_id = field == "id";
        out.insert(field, v);
        if after_id {
            out.insert("sha256".into(), Value::from(k.sha256.as_str()));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_come_back_after_the_id() {
        let doc = json!({"id": "web", "owner": "acme", "name": "Web player"});
        let key = match check(doc) {
            Ok(k) => k,
            Err(e) => unreachable!("{}", e.body()),
        };
        assert_eq!(key.json, r#"{"id":"web","owner":"acme"}"#);
        assert_eq!(
            view(key.name.as_deref(), &key.json).to_string(),
            r#"{"id":"web","name":"Web player","owner":"acme"}"#
        );
    }
}
