//! The admin API's bodies and the OpenAPI 3.1 document made from them and from the
//! handlers' `#[utoipa::path]` attributes (`admin.rs`).
//!
//! The handlers answer with the response types below. Request bodies are read as JSON and
//! checked by the filter's own compiler (`request.rs`), so an entry means exactly what the
//! filter makes of it; the request types here describe what that check accepts, and a test
//! holds their fields to the compiler's.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// The security scheme every admin call names (as `security(("admin_token" = []))`).
pub const ADMIN_TOKEN: &str = "admin_token";
/// The security scheme of GitHub's signed leak reports, the one call without the admin token.
pub const GITHUB_SIGNATURE: &str = "github_signature";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate key service: admin API",
        description = "The keys a key service (`keygate serve`) holds: create, list, show, \
                       update, revoke and rotate them, read the audit log, export the table. \
                       Every call but this document and the console's page needs \
                       `Authorization: Bearer <admin token>`; errors are JSON (`Error`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&AdminToken),
    tags(
        (name = "keys", description = "The keys the service holds"),
        (name = "owners", description = "Limits shared by all keys of one owner"),
        (name = "leaks", description = "Keys seen where they should not be: reported, then disabled or ended"),
        (name = "usage", description = "What the filters counted: requests per key by result, over time"),
        (name = "audit", description = "Who changed what"),
        (name = "export", description = "The whole table as a plugin configuration"),
        (name = "meta", description = "This document"),
        (name = "console", description = "The key console: a page that calls this API"),
    )
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An admin token whose SHA-256 is listed in KEYGATE_ADMIN_TOKEN_SHA256.",
            ))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(ADMIN_TOKEN, SecurityScheme::Http(scheme));
        let mut github = ApiKeyValue::new("Github-Public-Key-Signature");
        github.description = Some(
            "Base64 ECDSA P-256 / SHA-256 signature of the body by the GitHub key named in \
             Github-Public-Key-Identifier, one of those in the --github-keys file."
                .into(),
        );
        components
            .add_security_scheme(GITHUB_SIGNATURE, SecurityScheme::ApiKey(ApiKey::Header(github)));
    }
}

/// A key entry as an admin sees it: the plugin configuration's key entry (without `sha256`
/// or `key`) with its `name` after the `id`. Fields left out have the filter's defaults.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A description for the document; entries are JSON checked by the compiler.
pub struct KeyEntry {
    /// 1-64 of A-Z a-z 0-9 . _ -
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$", examples("web"))]
    id: String,
    /// Free text for people (1-200 characters), never sent to the filter.
    #[schema(value_type = String, required = false, min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Forwarded upstream in the owner header.
    #[schema(value_type = String, required = false, examples("user-42"))]
    owner: Option<String>,
    /// RFC 3339 time from which the key is valid.
    #[schema(value_type = String, required = false, examples("2026-12-01T15:00:00Z"))]
    not_before: Option<String>,
    /// RFC 3339 time at which the key stops being valid.
    #[schema(value_type = String, required = false, examples("2026-12-01T15:00:00Z"))]
    expires_at: Option<String>,
    /// The filter refuses the key (`denied_disabled`).
    #[schema(value_type = bool, required = false)]
    disabled: Option<bool>,
    /// Makes the key usable from these browser origins.
    #[schema(value_type = KeyCors, required = false)]
    cors: Option<KeyCors>,
    /// The key's own rules (instead of the configuration's).
    #[schema(value_type = Vec<Rule>, required = false)]
    rules: Option<Vec<Rule>>,
    /// Scopes the key to these resource ids.
    #[schema(value_type = Vec<String>, required = false)]
    resources: Option<Vec<String>>,
    /// Request limits, counted by the rate-limit service (`--ratelimit-listen`).
    #[schema(value_type = Vec<LimitSchema>, required = false)]
    limits: Option<Vec<LimitSchema>>,
}

/// `POST /v1/keys`: a key entry, its `id` generated (`key_` and 16 hex characters) when absent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // As KeyEntry.
pub struct NewKey {
    /// 1-64 of A-Z a-z 0-9 . _ -
    #[schema(value_type = String, required = false, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    id: Option<String>,
    /// Free text for people (1-200 characters), never sent to the filter.
    #[schema(value_type = String, required = false, min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Forwarded upstream in the owner header.
    #[schema(value_type = String, required = false)]
    owner: Option<String>,
    /// RFC 3339 time from which the key is valid.
    #[schema(value_type = String, required = false)]
    not_before: Option<String>,
    /// RFC 3339 time at which the key stops being valid.
    #[schema(value_type = String, required = false)]
    expires_at: Option<String>,
    /// Create it disabled.
    #[schema(value_type = bool, required = false)]
    disabled: Option<bool>,
    /// Makes the key usable from these browser origins.
    #[schema(value_type = KeyCors, required = false)]
    cors: Option<KeyCors>,
    /// The key's own rules (instead of the configuration's).
    #[schema(value_type = Vec<Rule>, required = false)]
    rules: Option<Vec<Rule>>,
    /// Scopes the key to these resource ids.
    #[schema(value_type = Vec<String>, required = false)]
    resources: Option<Vec<String>>,
    /// Request limits, counted by the rate-limit service (`--ratelimit-listen`).
    #[schema(value_type = Vec<LimitSchema>, required = false)]
    limits: Option<Vec<LimitSchema>>,
}

/// `PATCH /v1/keys/{id}`: a JSON merge patch (RFC 7396) of the entry as listed: members
/// replace, `null` removes, objects merge. The result is checked like a new entry.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // As KeyEntry.
pub struct EntryPatch {
    /// The id cannot change: when given, it is the path's (rotate makes a key with a new id).
    #[schema(value_type = String, required = false)]
    id: Option<String>,
    /// `null` removes the name.
    name: Option<String>,
    owner: Option<String>,
    not_before: Option<String>,
    expires_at: Option<String>,
    /// `true` refuses the key; `null` (or `false`) accepts it again.
    disabled: Option<bool>,
    /// Merged into the key's `cors` member; `null` removes it.
    cors: Option<CorsPatch>,
    rules: Option<Vec<Rule>>,
    resources: Option<Vec<String>>,
    /// Replaces the list; `null` removes every limit.
    limits: Option<Vec<LimitSchema>>,
}

/// At most `requests` requests in each fixed window of one `per` (windows start on the
/// Unix epoch's multiples: a `minute` window starts at second 0 of each minute, UTC).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Limit)]
#[allow(dead_code)] // As KeyEntry.
pub struct LimitSchema {
    /// Unique within its list; 1-64 of A-Z a-z 0-9 . _ -. Without one, the limit is named
    /// `requests/per` (`100/minute`).
    #[schema(value_type = String, required = false, pattern = "^[A-Za-z0-9._-]{1,64}$", examples("per-minute"))]
    name: Option<String>,
    /// 1 to 1000000000000.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, examples(100))]
    requests: u64,
    per: PerSchema,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Per)]
#[allow(dead_code)] // As KeyEntry.
pub enum PerSchema {
    Second,
    Minute,
    Hour,
    Day,
}

/// `PUT /v1/owners/{owner}`: limits shared by every key of the owner (one request counts
/// once against each of them, and once against each limit of its key).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // As KeyEntry.
pub struct OwnerLimitsBody {
    #[schema(value_type = Vec<LimitSchema>)]
    limits: Vec<LimitSchema>,
}

/// An owner and its limits.
#[derive(Serialize, ToSchema)]
pub struct Owner {
    #[schema(examples("acme"))]
    pub owner: String,
    #[schema(value_type = Vec<LimitSchema>)]
    pub limits: Value,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub updated_at: String,
}

/// Every owner with limits, in name order.
#[derive(Serialize, ToSchema)]
pub struct OwnerList {
    pub owners: Vec<Owner>,
}

/// A key's browser origins.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // As KeyEntry.
pub struct KeyCors {
    /// Origins (`scheme://host[:port]`), or `*`.
    #[schema(examples("https://app.example"))]
    allowed_origins: Vec<String>,
    /// Every endpoint, not only the configuration's `cors_endpoints` (default false).
    #[schema(value_type = bool, required = false)]
    full_access: Option<bool>,
}

/// A merge patch of a key's `cors` member.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // As KeyEntry.
pub struct CorsPatch {
    #[schema(value_type = Vec<String>, required = false)]
    allowed_origins: Option<Vec<String>>,
    full_access: Option<bool>,
}

/// One rule of a key's own: these methods on these paths.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // As KeyEntry.
pub struct Rule {
    #[schema(examples("GET"))]
    methods: Vec<String>,
    /// Path patterns; `{id}` matches one segment, the resource id.
    #[schema(examples("/api/stream/{id}"))]
    paths: Vec<String>,
}

/// `POST /v1/keys/{id}/rotate`.
#[derive(Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// How long the old key keeps working, in seconds (0 to 315360000, ten years).
    #[schema(minimum = 0, maximum = 315_360_000)]
    pub grace_seconds: i64,
    /// The successor's id (generated when absent).
    #[schema(value_type = String, required = false, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub id: Option<String>,
}

/// `201` to a create or a rotation: the new key, shown this once, and its entry.
#[derive(Serialize, ToSchema)]
pub struct Created {
    /// The secret (`kg_`, 43 base62 characters and a 6-character base62 CRC32 checksum); the
    /// service keeps only its SHA-256.
    #[schema(examples("kg_HJKQWobuVBeJtrF03FxtNMWgPecfSHc9gpXD2uejDzm323KNP"))]
    pub key: String,
    #[schema(value_type = KeyEntry)]
    pub entry: Value,
}

/// One key.
#[derive(Serialize, ToSchema)]
pub struct Shown {
    #[schema(value_type = KeyEntry)]
    pub entry: Value,
    /// The leaks reported for this key, oldest first (`GET` only; absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub leaks: Vec<LeakRecord>,
}

/// A leak reported for a key.
#[derive(Serialize, ToSchema)]
pub struct LeakRecord {
    /// RFC 3339 UTC, to the second.
    #[schema(examples("2026-12-01T15:00:00Z"))]
    pub time: String,
    /// Who reported it: an admin (their token's first 8 hex digest characters) or `github`.
    pub reporter: String,
    /// Where it was seen, as the report said.
    pub source: String,
    /// What was done: `disabled`, `expires` (its end brought forward) or `none` (it was
    /// already disabled, or already ending sooner).
    #[schema(examples("disabled"))]
    pub action: String,
}

/// `POST /v1/leaks`: a key seen where it should not be.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // A description for the document; the handler reads the JSON itself.
pub struct LeakReport {
    /// The leaked key itself (compared by its SHA-256, never stored or logged).
    key: String,
    /// Where it was seen: a URL or a note, 1-2048 characters.
    #[schema(examples("https://github.com/acme/app/commit/4f1c2e"))]
    source: String,
}

/// What a leak report did.
#[derive(Serialize, ToSchema)]
pub struct LeakAnswer {
    /// The key reported.
    pub key_id: String,
    /// `disabled`, `expires` or `none`, as in `LeakRecord`.
    pub action: String,
    /// The key's end, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub expires_at: Option<String>,
}

/// One report of a GitHub secret scanning partner call, answered.
#[derive(ToSchema)]
#[allow(dead_code)] // Written by `github::Label`.
pub struct GithubLabel {
    /// The SHA-256 of the reported token, lower-case hex.
    token_hash: String,
    /// The `type` GitHub gave.
    token_type: String,
    /// `true_positive` for a key this service holds (now disabled or ending), else
    /// `false_positive`.
    #[schema(examples("true_positive"))]
    label: String,
}

/// One report in a GitHub secret scanning partner call.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Read by `github::parse_reports`.
pub struct GithubReport {
    token: String,
    #[serde(rename = "type")]
    kind: String,
    url: String,
    source: String,
}

/// One page of keys, in id order.
#[derive(Serialize, ToSchema)]
pub struct KeyPage {
    #[schema(value_type = Vec<KeyEntry>)]
    pub entries: Vec<Value>,
    /// The ids on this page that were ever reported leaked.
    pub leaked: Vec<String>,
    /// The `after` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// One page of the audit log, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    /// The `after` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// One change an admin made.
#[derive(Serialize, ToSchema)]
pub struct AuditRecord {
    /// The change number.
    pub seq: i64,
    /// RFC 3339 UTC, to the second.
    #[schema(examples("2026-12-01T15:00:00Z"))]
    pub time: String,
    /// The first 8 hex characters of the admin token's SHA-256 (`import` for `--import`,
    /// `github` for a report from GitHub's secret scanning).
    #[schema(examples("7b791f9f"))]
    pub admin: String,
    /// `create`, `update`, `delete`, `rotate` or `leak` for a key; `owner-set` or
    /// `owner-delete` for an owner's limits.
    #[schema(examples("rotate"))]
    pub action: String,
    /// The key changed; empty for an owner's change and for a leak report naming no key
    /// this service holds.
    pub key_id: String,
    /// The owner whose limits changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A rotation's new key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub successor: Option<String>,
    /// Where a reported leak was seen, as the report said.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub source: Option<String>,
}

/// The whole table as a plugin configuration, one key a line.
#[derive(ToSchema)]
#[allow(dead_code)] // Written line by line by `admin::export_json`.
pub struct Export {
    keys: Vec<ExportedKey>,
}

/// A key entry of a plugin configuration: the stored entry with `sha256` after its `id`.
#[derive(ToSchema)]
#[allow(dead_code)] // As Export.
pub struct ExportedKey {
    id: String,
    /// The SHA-256 of the secret, lower-case hex.
    sha256: String,
    #[schema(value_type = String, required = false)]
    owner: Option<String>,
    #[schema(value_type = String, required = false)]
    not_before: Option<String>,
    #[schema(value_type = String, required = false)]
    expires_at: Option<String>,
    #[schema(value_type = bool, required = false)]
    disabled: Option<bool>,
    #[schema(value_type = KeyCors, required = false)]
    cors: Option<KeyCors>,
    #[schema(value_type = Vec<Rule>, required = false)]
    rules: Option<Vec<Rule>>,
    #[schema(value_type = Vec<String>, required = false)]
    resources: Option<Vec<String>>,
    #[schema(value_type = Vec<LimitSchema>, required = false)]
    limits: Option<Vec<LimitSchema>>,
}

/// Every error: the status's reason phrase and why (see `error.rs`).
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Written by `ApiError::body`, byte for byte the filter's 401.
pub struct Error {
    #[schema(examples("Bad Request"))]
    error: String,
    message: String,
    /// The JSON path of the refused field (`cors.allowed_origins[1]`).
    #[schema(value_type = String, required = false)]
    path: Option<String>,
}

/// `GET /v1/keys`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // The names the handler accepts; it reads the values itself.
pub struct ListQuery {
    /// Only this owner's keys.
    owner: Option<String>,
    /// Keys per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Continue after this id (the `next` of the previous page).
    after: Option<String>,
    /// Only keys not used since this RFC 3339 time, to the minute (never-used keys included).
    unused_since: Option<String>,
}

/// `GET /v1/audit`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // As ListQuery.
pub struct AuditQuery {
    /// Records numbered below this one (the `next` of the previous page).
    after: Option<String>,
    /// Records per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/keys/{id}/usage` and `GET /v1/usage`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // As ListQuery.
pub struct UsageQuery {
    /// RFC 3339, rounded down to the step (default: a day before `to`).
    from: Option<String>,
    /// RFC 3339, rounded up to the step (default: now).
    to: Option<String>,
    /// `minute` (while minutes are kept, `--usage-minutes-days`), `hour` (the default) or
    /// `day`; at most 10,000 points.
    step: Option<String>,
    /// `GET /v1/usage` only: one owner's keys.
    owner: Option<String>,
}

/// One bucket of a usage series.
#[derive(Serialize, ToSchema)]
pub struct UsagePointBody {
    /// The bucket's start, RFC 3339 UTC.
    pub at: String,
    /// Requests decided in the bucket (every result but the upstream classes).
    pub requests: i64,
    /// By result: `allowed`, `denied_unknown`, `denied_expired`, ..., `unavailable`, and
    /// the upstream's answers to allowed requests, `upstream_2xx`, `upstream_3xx`,
    /// `upstream_4xx`, `upstream_429`, `upstream_5xx`. Zeros are left out.
    #[schema(value_type = Object)]
    pub counts: Value,
}

/// A key's usage over time.
#[derive(Serialize, ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    pub from: String,
    pub to: String,
    #[schema(examples("hour"))]
    pub step: String,
    /// The minute the key was last presented; `null` when never.
    #[schema(required = true)]
    pub last_used_at: Option<String>,
    pub points: Vec<UsagePointBody>,
}

/// An owner's or a key's totals in a window.
#[derive(Serialize, ToSchema)]
pub struct UsageWho {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub key_id: Option<String>,
    #[schema(required = true)]
    pub owner: Option<String>,
    pub requests: i64,
    #[schema(value_type = Object)]
    pub counts: Value,
}

/// Totals in a window: of everything (or of one owner), per owner, the keys with the most
/// requests, and the series.
#[derive(Serialize, ToSchema)]
pub struct UsageTotals {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub owner: Option<String>,
    pub from: String,
    pub to: String,
    pub step: String,
    pub requests: i64,
    #[schema(value_type = Object)]
    pub counts: Value,
    pub owners: Vec<UsageWho>,
    /// At most 10, most requests first.
    pub top_keys: Vec<UsageWho>,
    pub points: Vec<UsagePointBody>,
}

/// The query parameters `P` documents: the only ones its handler accepts.
pub fn names<P: IntoParams>() -> Vec<String> {
    P::into_params(|| None).into_iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::request::{check, rotation};
    use serde_json::json;

    fn document() -> Value {
        serde_json::to_value(crate::serve::openapi()).unwrap_or_default()
    }

    /// The properties the document gives a schema.
    fn documented(schema: &str) -> Vec<String> {
        let doc = document();
        let properties = doc.pointer(&format!("/components/schemas/{schema}/properties"));
        let mut names: Vec<String> = properties
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The fields the filter's compiler accepts where `doc` has an unknown one, from its
    /// refusal ("unknown field `zzz`, expected one of `id`, `sha256`, ..." or "expected `a`
    /// or `b`").
    fn accepted(doc: Value) -> Vec<String> {
        let message = match check(doc) {
            Ok(_) => String::new(),
            Err(e) => e.message,
        };
        let list = message.split(", expected ").nth(1).unwrap_or_default();
        let list = list.split(" at line ").next().unwrap_or_default();
        let list = list.strip_prefix("one of ").unwrap_or(list);
        let mut names: Vec<String> = list
            .split(", ")
            .flat_map(|f| f.split(" or "))
            .map(|f| f.trim_matches('`').to_string())
            .filter(|f| !f.is_empty())
            .collect();
        names.sort();
        names
    }

    fn with(mut names: Vec<String>, more: &[&str], less: &[&str]) -> Vec<String> {
        names.extend(more.iter().map(|m| m.to_string()));
        names.retain(|n| !less.contains(&n.as_str()));
        names.sort();
        names
    }

    #[test]
    fn entry_schemas_have_exactly_the_compilers_fields() {
        let entry = accepted(json!({"id": "a", "zzz": 1}));
        assert!(entry.contains(&"owner".to_string()), "{entry:?}");
        let admin_sees = with(entry.clone(), &["name"], &["sha256", "key"]);
        assert_eq!(documented("KeyEntry"), admin_sees);
        assert_eq!(documented("NewKey"), admin_sees);
        assert_eq!(documented("EntryPatch"), admin_sees);
        assert_eq!(documented("ExportedKey"), with(entry, &[], &["key"]));

        let cors = accepted(json!({"id": "a", "cors": {"allowed_origins": [], "zzz": 1}}));
        assert!(!cors.is_empty());
        assert_eq!(documented("KeyCors"), cors);
        assert_eq!(documented("CorsPatch"), cors);
        let rule = accepted(json!({"id": "a", "rules": [{"methods": [], "paths": [], "zzz": 1}]}));
        assert!(!rule.is_empty());
        assert_eq!(documented("Rule"), rule);
        assert_eq!(documented("Rotation"), ["grace_seconds", "id"]);
        let limit =
            accepted(json!({"id": "a", "limits": [{"requests": 1, "per": "day", "zzz": 1}]}));
        assert!(!limit.is_empty());
        assert_eq!(documented("Limit"), limit);
        assert_eq!(documented("OwnerLimitsBody"), ["limits"]);
    }

    #[test]
    fn a_full_entry_is_accepted_and_answered_as_documented() {
        let entry = json!({"id": "web", "name": "Web", "owner": "acme",
            "not_before": "2026-01-01T00:00:00Z", "expires_at": "2027-01-01T00:00:00Z",
            "disabled": true, "cors": {"allowed_origins": ["https://a.example"], "full_access": false},
            "rules": [{"methods": ["GET"], "paths": ["/v1/{id}"]}], "resources": ["x"]});
        let key = check(entry.clone()).map_err(|e| e.body());
        assert!(key.is_ok(), "{key:?}");
        assert!(serde_json::from_value::<KeyEntry>(entry.clone()).is_ok());
        assert!(serde_json::from_value::<NewKey>(entry).is_ok());
        let rotate = json!({"grace_seconds": 60, "id": "b"});
        assert!(rotation(&rotate).is_ok());
        assert!(serde_json::from_value::<Rotation>(rotate).is_ok());
    }

    #[test]
    fn every_admin_call_names_the_admin_token_and_only_the_page_and_document_do_not() {
        let doc = document();
        let scheme = doc.pointer(&format!("/components/securitySchemes/{ADMIN_TOKEN}/scheme"));
        assert_eq!(scheme, Some(&json!("bearer")));
        let paths = doc.get("paths").and_then(Value::as_object).cloned().unwrap_or_default();
        for (path, item) in paths {
            for (method, operation) in item.as_object().cloned().unwrap_or_default() {
                let open = operation.get("security").is_none();
                // The console's page and assets are public; `/metrics` is the admin listener's
                // scrape path, behind the token like the API.
                let public =
                    path == "/v1/openapi.json" || !(path.starts_with("/v1/") || path == "/metrics");
                assert_eq!(open, public, "{method} {path}");
                let scheme =
                    if path == "/v1/leaks/github" { GITHUB_SIGNATURE } else { ADMIN_TOKEN };
                if !open {
                    assert_eq!(operation["security"], json!([{scheme: []}]), "{method} {path}");
                }
            }
        }
    }
}
