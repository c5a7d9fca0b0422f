//! The admin API: `/v1/keys`, `/v1/audit` and `/v1/export`, each call authorized by an
//! admin token whose SHA-256 is in `KEYGATE_ADMIN_TOKEN_SHA256`. The same listener serves
//! the key console at `/` (see `console`), which also refuses cross-site calls to the API.
//!
//! Handlers read parse → check (with the filter's own compiler) → store → answer. An entry
//! as an admin sees it is the stored entry with its `name` after the `id`; the digest and
//! the secret are never part of it (the secret is in the one 201 that creates it).

use crate::key::{hex, new_secret};
use crate::serve::console;
use crate::serve::db::{KeyRow, StoredKey, Touched, Write};
use crate::serve::error::{json, ApiError};
use crate::serve::filter_api::{method_not_allowed, not_found};
use crate::serve::{now_ms, rfc3339, AppState};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use keygate::core::cors::Origins;
use keygate::core::keytable::sha256;
use keygate::core::parse;
use keygate::core::timestamp::parse_rfc3339;
use keygate::core::token::bearer_key;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 1 << 20;
const NAME_CHARS: std::ops::RangeInclusive<usize> = 1..=200;
/// The longest rotation grace period: ten years.
const MAX_GRACE_SECONDS: i64 = 10 * 365 * 86_400;

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
            Ok(Admin(hex(&digest[..4])))
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
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        Ok(JsonBody(value))
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
        return Err(ApiError::bad_request(format!("unknown query parameter {other:?}")));
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

/// An entry the filter's compiler accepted, ready to store.
pub(super) struct Checked {
    pub id: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    /// Normalised origins, or `*`.
    pub origins: Vec<String>,
    /// The entry as the filter receives it.
    pub json: String,
}

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

/// Takes `name` out of an admin's entry and compiles the rest as the filter would.
pub(super) fn check(doc: Value) -> Result<Checked, ApiError> {
    let Value::Object(mut entry) = doc else {
        return Err(ApiError::at("entry", "expected a JSON object"));
    };
    let name = match entry.shift_remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if NAME_CHARS.contains(&n.chars().count()) => Some(n),
        Some(_) => return Err(ApiError::at("name", "expected a string of 1-200 characters")),
    };
    let json = Value::Object(entry).to_string();
    let compiled = parse::entry(json.as_bytes(), "").map_err(ApiError::invalid)?;
    let origins = match &compiled.key.origins {
        None => Vec::new(),
        Some(o) => match &**o {
            Origins::Any => vec!["*".to_string()],
            Origins::List(list) => {
                list.iter().map(|o| String::from_utf8_lossy(o).into_owned()).collect()
            }
        },
    };
    Ok(Checked {
        id: compiled.key.id.to_string(),
        name,
        owner: compiled.key.owner.as_deref().map(str::to_string),
        origins,
        json,
    })
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
    Ok(format!("key_{}", hex(&bytes)))
}

fn secret() -> Result<(String, String), ApiError> {
    let secret = new_secret().map_err(|e| {
        eprintln!("keygate serve: {e}");
        ApiError::internal()
    })?;
    let digest = hex(&sha256(secret.as_bytes()));
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

/// The generated id goes first, where a person reads it.
fn with_id(doc: Value) -> Result<Value, ApiError> {
    match doc {
        Value::Object(map) if !map.contains_key("id") => {
            let mut out = Map::new();
            out.insert("id".into(), Value::from(new_id()?));
            out.extend(map);
            Ok(Value::Object(out))
        }
        other => Ok(other),
    }
}

async fn create(
    State(s): State<AppState>,
    admin: Admin,
    JsonBody(doc): JsonBody,
) -> Result<Response, ApiError> {
    let key = check(with_id(doc)?)?;
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
    if !patch.is_object() {
        // RFC 7396 would replace the whole entry with it, which is never a valid entry.
        return Err(ApiError::at("entry", "expected a JSON object (a merge patch of the entry)"));
    }
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    let old = w.get(&id).await?.ok_or_else(|| no_such_key(&id))?;
    let mut doc = view_of(&old);
    merge_patch(&mut doc, &patch);
    if doc.get("id") != Some(&Value::String(id.clone())) {
        return Err(ApiError::at("id", "cannot be changed (rotate makes a key with a new id)"));
    }
    let key = check(doc)?;
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

/// `{"grace_seconds": N}` (and optionally the successor's `"id"`).
fn rotation(body: &Value) -> Result<(i64, Option<String>), ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::at("", "expected a JSON object such as {\"grace_seconds\": 3600}"));
    };
    if let Some(other) = map.keys().find(|k| *k != "grace_seconds" && *k != "id") {
        return Err(ApiError::at(other, "unknown field, expected grace_seconds or id"));
    }
    let grace = map
        .get("grace_seconds")
        .and_then(Value::as_i64)
        .filter(|n| (0..=MAX_GRACE_SECONDS).contains(n))
        .ok_or_else(|| {
            ApiError::at("grace_seconds", "expected a whole number of seconds, 0 to 315360000")
        })?;
    let id = match map.get("id") {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(ApiError::at("id", "expected a string")),
    };
    Ok((grace, id))
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

/// RFC 7396 JSON merge patch: objects merge member by member, `null` removes a member,
/// anything else replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.shift_remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patched(target: &str, patch: &str) -> String {
        let mut t: Value = serde_json::from_str(target).unwrap_or(Value::Null);
        let p: Value = serde_json::from_str(patch).unwrap_or(Value::Null);
        merge_patch(&mut t, &p);
        t.to_string()
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The examples of RFC 7396, appendix A.
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (r#"{"a":{"b":"c"}}"#, r#"{"a":{"b":"d","c":null}}"#, r#"{"a":{"b":"d"}}"#),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"a":"b"}"#, r#"["c"]"#, r#"["c"]"#),
            (r#"{"a":"foo"}"#, r#"null"#, r#"null"#),
            (r#"{"a":"foo"}"#, r#""bar""#, r#""bar""#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
            (r#"{}"#, r#"{"a":{"bb":{"ccc":null}}}"#, r#"{"a":{"bb":{}}}"#),
        ];
        for (target, patch, result) in cases {
            assert_eq!(patched(target, patch), result, "{target} + {patch}");
        }
    }

    #[test]
    fn names_stay_out_of_the_stored_entry_and_come_back_after_the_id() {
        let doc = json!({"id": "web", "name": "Web player", "owner": "acme",
            "cors": {"allowed_origins": ["HTTPS://A.example:443"]}});
        let key = match check(doc) {
            Ok(k) => k,
            Err(e) => unreachable!("{}", e.body()),
        };
        assert_eq!(key.name.as_deref(), Some("Web player"));
        assert_eq!(key.origins, ["https://a.example"]);
        assert_eq!(
            key.json,
            r#"{"id":"web","owner":"acme","cors":{"allowed_origins":["HTTPS://A.example:443"]}}"#
        );
        assert_eq!(
            view(key.name.as_deref(), &key.json).to_string(),
            r#"{"id":"web","name":"Web player","owner":"acme","cors":{"allowed_origins":["HTTPS://A.example:443"]}}"#
        );
    }

    #[test]
    fn refused_entries_name_their_path() {
        let refused = |doc: Value| match check(doc) {
            Ok(_) => unreachable!("accepted"),
            Err(e) => (e.path.unwrap_or_default(), e.message),
        };
        assert_eq!(refused(json!({"id": "a", "name": ""})).0, "name");
        assert_eq!(refused(json!({"id": "a", "colour": 1})).0, "colour");
        assert_eq!(
            refused(
                json!({"id": "a", "cors": {"allowed_origins": ["https://a.example", "ftp://x"]}})
            )
            .0,
            "cors.allowed_origins[1]"
        );
        assert_eq!(refused(json!({"id": "a", "sha256": "00"})).0, "sha256");
        assert_eq!(refused(json!(["a"])).0, "entry");
    }
}
