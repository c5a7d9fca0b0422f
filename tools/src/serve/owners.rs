//! `/v1/owners`: limits shared by every key of one owner, set, read and removed by admins
//! and audited like key changes. A change touches every key of the owner in the feed, so
//! that filters learn at once whether its keys now need the rate-limit service.

use crate::serve::admin::{answer, Admin, JsonBody};
use crate::serve::api::{Error, Owner, OwnerLimitsBody, OwnerList};
use crate::serve::db::{OwnerRow, Touched};
use crate::serve::error::ApiError;
use crate::serve::{now_ms, rfc3339, AppState};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keygate::core::entry::check_header_value;
use keygate::core::parse;
use serde_json::Value;

type OwnerPath = Result<Path<String>, PathRejection>;

/// The owner named in the path: what a key's `owner` may be.
fn owner_of(path: OwnerPath) -> Result<String, ApiError> {
    let Path(owner) = path.map_err(|_| ApiError::bad_request("malformed owner in the path"))?;
    check_header_value(&owner).map_err(|reason| ApiError::at("owner", reason))?;
    Ok(owner)
}

fn no_such_owner(owner: &str) -> ApiError {
    ApiError::not_found(format!("no limits for owner {owner:?}"))
}

fn shown(row: &OwnerRow) -> Owner {
    Owner {
        owner: row.owner.clone(),
        limits: serde_json::from_str(&row.limits).unwrap_or(Value::Array(Vec::new())),
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    }
}

/// Every key of `owner` goes into this change, so filters look them up again.
async fn touch_keys(w: &mut crate::serve::db::Write<'_>, owner: &str) -> Result<(), ApiError> {
    for key in w.keys_of(owner).await? {
        w.touched(&Touched { sha256: key.sha256, origins: Vec::new() }).await?;
    }
    Ok(())
}

/// Set an owner's limits (replacing any it had).
#[utoipa::path(
    put, path = "/v1/owners/{owner}", tag = "owners", operation_id = "set_owner_limits",
    security(("admin_token" = [])),
    params(("owner" = String, Path, description = "The owner, as keys name it in `owner`")),
    request_body = OwnerLimitsBody,
    responses(
        (status = 200, description = "Changed", body = Owner),
        (status = 201, description = "The owner had no limits before", body = Owner),
        (status = 400, description = "Malformed JSON or limits the compiler refuses", body = Error),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 413, description = "Body over 1 MiB", body = Error),
        (status = 415, description = "Body not JSON", body = Error),
    )
)]
pub async fn set_owner(
    State(s): State<AppState>,
    admin: Admin,
    owner: OwnerPath,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let owner = owner_of(owner)?;
    let text = body.to_string();
    parse::owner_limits(text.as_bytes()).map_err(ApiError::invalid)?;
    let limits = body.get("limits").map(Value::to_string).unwrap_or_else(|| "[]".into());
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    let created = w.put_owner(&owner, &limits).await?;
    touch_keys(&mut w, &owner).await?;
    w.audit_owner(&admin.0, "owner-set", &owner).await?;
    // Not admin's `commit`: the key table is unchanged, so the ECDS file is not rewritten.
    let seq = w.seq;
    w.commit().await?;
    eprintln!("keygate serve: owner-set {owner:?} by admin {} (change {seq})", admin.0);
    let row = s.db.owner(&owner).await?.ok_or_else(|| no_such_owner(&owner))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(answer(status, &shown(&row)))
}

/// Show an owner's limits.
#[utoipa::path(
    get, path = "/v1/owners/{owner}", tag = "owners", operation_id = "show_owner",
    security(("admin_token" = [])),
    params(("owner" = String, Path, description = "The owner")),
    responses(
        (status = 200, description = "The owner's limits", body = Owner),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "The owner has no limits", body = Error),
    )
)]
pub async fn show_owner(
    State(s): State<AppState>,
    _admin: Admin,
    owner: OwnerPath,
) -> Result<Response, ApiError> {
    let owner = owner_of(owner)?;
    let row = s.db.owner(&owner).await?.ok_or_else(|| no_such_owner(&owner))?;
    Ok(answer(StatusCode::OK, &shown(&row)))
}

/// Remove an owner's limits: its keys keep only their own.
#[utoipa::path(
    delete, path = "/v1/owners/{owner}", tag = "owners", operation_id = "delete_owner",
    security(("admin_token" = [])),
    params(("owner" = String, Path, description = "The owner")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No or unknown admin token", body = Error),
        (status = 404, description = "The owner has no limits", body = Error),
    )
)]
pub async fn delete_owner(
    State(s): State<AppState>,
    admin: Admin,
    owner: OwnerPath,
) -> Result<Response, ApiError> {
    let owner = owner_of(owner)?;
    let mut w = s.db.begin_write(rfc3339(now_ms())).await?;
    if !w.delete_owner(&owner).await? {
        return Err(no_such_owner(&owner));
    }
    touch_keys(&mut w, &owner).await?;
    w.audit_owner(&admin.0, "owner-delete", &owner).await?;
    let seq = w.seq;
    w.commit().await?;
    eprintln!("keygate serve: owner-delete {owner:?} by admin {} (change {seq})", admin.0);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every owner with limits.
#[utoipa::path(
    get, path = "/v1/owners", tag = "owners", operation_id = "list_owners",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every owner with limits, in name order", body = OwnerList),
        (status = 401, description = "No or unknown admin token", body = Error),
    )
)]
pub async fn list_owners(State(s): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let owners = s.db.owners().await?.iter().map(shown).collect();
    Ok(answer(StatusCode::OK, &OwnerList { owners }))
}
