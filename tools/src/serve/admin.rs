//! The admin API: `/v1/keys`, `/v1/audit` and `/v1/export`, each call authorized by an
//! admin token whose SHA-256 is in `KEYGATE_ADMIN_TOKEN_SHA256`. The same listener serves
//! the key console at `/` (see `console`), which also refuses cross-site calls to the API.
//!
//! Handlers read parse → check (with the filter's own compiler) → store → answer. An entry
//! as an admin sees it is the stored entry with its `name` after the `id`; the digest and
//! the secret are never part of it (the secret is in the one 201 that creates it).

use crate::secret::new_secret;
use crate::serve::console;
use crate::serve::db::{KeyRow, StoredKey, Touched, Write};
use crate::serve::error::{json, method_not_allowed, not_found, ApiError};
use crate::serve::request::{check, json_body, patched, rotation, with_id, Checked};
use crate::serve::{now_ms, rfc3339, AppState};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use keygate::core::hex;
use keygate::core::keytable::sha256;
use keygate::core::parse::looks_like_a_field;
use keygate::core::timestamp::parse_rfc3339;
use keygate::core::token::bearer_key;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 1 << 20;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/keys", post(create).get(list))
        .route("/v1/keys/{id}", get(show).patch(update).delete(remove))
        .route("/v1/keys/{id}/rotate", post(rotate))
        .route("/v1/audit", get(audit))
        .route("/v1/export", get(export))
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(console::same_origin))
        .layer(middleware::from_fn(console::headers))
}

/// The admin who made the call: the first 8 hex characters of their token's digest.
pub struct Admin(String);

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
        if known {
            Ok(Admin(hex::encode(&digest[..4])))
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// A JSON request body: `application/json` (or `application/merge-patch+json`), at most
/// [`BODY_LIMIT`] bytes, well-formed.
pub struct JsonBody(Value);

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
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn id_of(path: IdPath) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|_| ApiError::bad_request("malformed key id in the path"))
}

fn params(query: Params, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Query(mut query) = query.map_err(|_| ApiError::bad_request("malformed query string"))?;
    if let Some(other) = query.keys().find(|k| !allowed.contains(&k.as_str())) {
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
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| {
        eprintln!("keygate serve: OS random source: {e}");
        ApiError::internal()
    })?;
    Ok(format!("key_{}", hex::encode(&bytes)))
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
fn view(name: Option<&str>, entry: &str) -> Value {
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

fn view_of(k: &StoredKey) -> Value {
    view(k.name.as_deref(), &k.entry)
}

fn answer(status: StatusCode, body: Value) -> Response {
    json(status, body.to_string())
}

/// Commits an admin's change, then wakes the ECDS writer and logs it (never a secret).
async fn commit(
    s: &AppState,
    w: Write<'_>,
    action: &str,
    id: &str,
    admin: &Admin,
) -> Result<(), ApiError> {
    let seq = w.seq;
    w.commit().await?;
    s.changed.notify_one();
    eprintln!("keygate serve: {action} {id} by admin {} (change {seq})", admin.0);
    Ok(())
}

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
    commit(&s, w, "create", &key.id, &admin).await?;
    let body = json!({ "key": secret, "entry": view(key.name.as_deref(), &key.json) });
    Ok(answer(StatusCode::CREATED, body))
}

async fn list(
    State(s): State<AppState>,
    _admin: Admin,
    query: Params,
) -> Result<Response, ApiError> {
    let q = params(query, &["owner", "limit", "after"])?;
    let limit = match q.get("limit") {
        None => 100,
        Some(n) => n
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit: expected 1-1000"))?,
    };
    let after = q.get("after").map_or("", String::as_str);
    let mut rows = s.db.list(q.get("owner").map(String::as_str), after, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|k| k.id.clone())
    } else {
        None
    };
    let entries: Vec<Value> = rows.iter().map(view_of).collect();
    Ok(answer(StatusCode::OK, json!({ "entries": entries, "next": next })))
}

async fn show(State(s): State<AppState>, _admin: Admin, id: IdPath) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let key = s.db.get(&id).await?.ok_or_else(|| no_such_key(&id))?;
    Ok(answer(StatusCode::OK, json!({ "entry": view_of(&key) })))
}

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
    commit(&s, w, "update", &id, &admin).await?;
    Ok(answer(StatusCode::OK, json!({ "entry": view(key.name.as_deref(), &key.json) })))
}

async fn remove(State(s): State<AppState>, admin: Admin, id: IdPath) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    let old = w.get(&id).await?.ok_or_else(|| no_such_key(&id))?;
    w.delete(&id).await?;
    w.touched(&Touched { sha256: old.sha256.clone(), origins: origins_of(&old.entry) }).await?;
    w.audit(&admin.0, "delete", &id, None).await?;
    commit(&s, w, "delete", &id, &admin).await?;
    Ok(axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT))
}

async fn rotate(
    State(s): State<AppState>,
    admin: Admin,
    id: IdPath,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let (grace, successor_id) = rotation(&body)?;
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
    commit(&s, w, "rotate", &id, &admin).await?;
    let body = json!({ "key": secret, "entry": view(successor.name.as_deref(), &successor.json) });
    Ok(answer(StatusCode::CREATED, body))
}

async fn audit(
    State(s): State<AppState>,
    _admin: Admin,
    query: Params,
) -> Result<Response, ApiError> {
    let q = params(query, &["after", "limit"])?;
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
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut e = json!({ "seq": r.seq, "time": r.at, "admin": r.admin, "action": r.action, "key_id": r.key_id });
            if let (Some(map), Some(successor)) = (e.as_object_mut(), &r.successor) {
                map.insert("successor".into(), Value::from(successor.as_str()));
            }
            e
        })
        .collect();
    Ok(answer(StatusCode::OK, json!({ "entries": entries, "next": next })))
}

async fn export(State(s): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let keys = s.db.all().await?;
    Ok(json(StatusCode::OK, export_json(&keys)))
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
