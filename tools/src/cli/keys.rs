//! `keygate keys ...`: the keys a key service (`keygate serve`) holds, managed through its
//! admin API. `--json` prints the API's own answer.

use crate::cli::connection::Connection;
use crate::cli::limit_arg::{self, limits_json};
use crate::client::{segment, Answer};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create(CreateArgs),
    /// List keys (one page; --after continues).
    List(ListArgs),
    /// Show one key.
    Show(IdArgs),
    /// Change a key (a JSON merge patch of its entry, or the options below).
    Update(UpdateArgs),
    /// Delete a key: the filter refuses it within the feed's delay.
    Revoke(IdArgs),
    /// Make a successor with the same settings; the old key keeps working for the grace period.
    Rotate(RotateArgs),
    /// Report a leaked key, read from standard input (never an argument, which shells and
    /// process lists keep): the service disables it at once, or ends it soon (its --on-leak).
    Leaked(LeakedArgs),
    /// A key's requests over time, by result and upstream status class.
    Usage(crate::cli::usage::KeyUsageArgs),
}

#[derive(Args)]
pub struct LeakedArgs {
    #[command(flatten)]
    conn: Connection,
    /// Where the key was seen: a URL or a note.
    #[arg(long, value_name = "URL")]
    source: String,
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    conn: Connection,
    /// The key's id (generated when absent): 1-64 of A-Z a-z 0-9 . _ -
    #[arg(long)]
    id: Option<String>,
    /// Free text for people (1-200 characters).
    #[arg(long)]
    name: Option<String>,
    /// Owner, forwarded upstream in the owner header.
    #[arg(long)]
    owner: Option<String>,
    /// Make it a CORS-enabled key usable from this origin (repeatable).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// With --cors-origin: allow every endpoint, not only cors_endpoints.
    #[arg(long)]
    full_access: bool,
    /// Scope the key to this resource id (repeatable).
    #[arg(long = "resource", value_name = "ID")]
    resources: Vec<String>,
    /// RFC 3339 time from which the key is valid.
    #[arg(long, value_name = "TIME")]
    not_before: Option<String>,
    /// RFC 3339 time at which the key stops being valid.
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
    /// A limit: REQUESTS/PER or NAME=REQUESTS/PER (repeatable), PER one of second, minute,
    /// hour, day.
    #[arg(long = "limit", value_name = "LIMIT")]
    limits: Vec<String>,
    /// A whole entry as JSON (e.g. with "rules"); the options above override its fields.
    #[arg(long, value_name = "JSON")]
    entry: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only keys of this owner.
    #[arg(long)]
    owner: Option<String>,
    /// Keys per page (1-1000, default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// Continue after this id (the `next` of the previous page).
    #[arg(long)]
    after: Option<String>,
    /// Only keys not used since then: RFC 3339, or a span back from now (`90d`).
    #[arg(long, value_name = "TIME", value_parser = crate::cli::usage::time_arg)]
    unused_since: Option<String>,
}

#[derive(Args)]
pub struct IdArgs {
    #[command(flatten)]
    conn: Connection,
    /// The key's id.
    id: String,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    conn: Connection,
    /// The key's id.
    id: String,
    /// A JSON merge patch (RFC 7396) of the entry; the options below are added to it.
    #[arg(long, value_name = "JSON")]
    patch: Option<String>,
    /// New name (free text, 1-200 characters).
    #[arg(long)]
    name: Option<String>,
    /// New owner.
    #[arg(long)]
    owner: Option<String>,
    /// Refuse the key (the filter answers denied_disabled).
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    /// Accept the key again.
    #[arg(long)]
    enable: bool,
    /// RFC 3339 time from which the key is valid.
    #[arg(long, value_name = "TIME")]
    not_before: Option<String>,
    /// RFC 3339 time at which the key stops being valid.
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
    /// Replace the key's CORS origins (repeatable).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Replace the key's limits (repeatable): REQUESTS/PER or NAME=REQUESTS/PER.
    #[arg(long = "limit", value_name = "LIMIT", conflicts_with = "no_limits")]
    limits: Vec<String>,
    /// Remove every limit of the key.
    #[arg(long)]
    no_limits: bool,
}

#[derive(Args)]
pub struct RotateArgs {
    #[command(flatten)]
    conn: Connection,
    /// The key's id.
    id: String,
    /// How long the old key keeps working, in seconds.
    #[arg(long, value_name = "SECONDS")]
    grace_seconds: u64,
    /// The successor's id (generated when absent).
    #[arg(long)]
    new_id: Option<String>,
}

pub fn run(cmd: KeysCommand) -> Result<ExitCode, String> {
    match cmd {
        KeysCommand::Create(a) => create(&a),
        KeysCommand::List(a) => list(&a),
        KeysCommand::Show(a) => {
            let answer = a.conn.call("GET", &format!("/v1/keys/{}", segment(&a.id)), None)?;
            print_entry(&a.conn, &answer, "");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Update(a) => update(&a),
        KeysCommand::Revoke(a) => {
            a.conn.call("DELETE", &format!("/v1/keys/{}", segment(&a.id)), None)?;
            if !a.conn.json {
                println!("revoked {}", a.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate(a) => rotate(&a),
        KeysCommand::Leaked(a) => leaked(&a),
        KeysCommand::Usage(a) => crate::cli::usage::key_usage(&a),
    }
}

fn leaked(a: &LeakedArgs) -> Result<ExitCode, String> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)
        .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
    let key = input.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err("expected one key on standard input (e.g. `keygate keys leaked --source URL < key.txt`)".into());
    }
    let body = json!({ "key": key, "source": a.source });
    let answer = a.conn.call("POST", "/v1/leaks", Some(body))?;
    if a.conn.json {
        println!("{}", answer.text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let field = |name: &str| answer.json.get(name).and_then(Value::as_str).unwrap_or("?");
    let id = field("key_id");
    match field("action") {
        "disabled" => println!("{id} disabled"),
        "expires" => println!("{id} ends at {}", field("expires_at")),
        _ => println!("{id} was already disabled or ending sooner; nothing changed"),
    }
    Ok(ExitCode::SUCCESS)
}

fn create(a: &CreateArgs) -> Result<ExitCode, String> {
    let mut entry = match &a.entry {
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            _ => return Err("--entry: expected a JSON object".into()),
        },
        None => Map::new(),
    };
    let mut set = |field: &str, value: Option<Value>| {
        if let Some(v) = value {
            entry.insert(field.into(), v);
        }
    };
    set("id", a.id.clone().map(Value::from));
    set("name", a.name.clone().map(Value::from));
    set("owner", a.owner.clone().map(Value::from));
    set("not_before", a.not_before.clone().map(Value::from));
    set("expires_at", a.expires_at.clone().map(Value::from));
    set("disabled", a.disabled.then_some(Value::Bool(true)));
    set(
        "cors",
        (!a.cors_origins.is_empty())
            .then(|| json!({ "allowed_origins": a.cors_origins, "full_access": a.full_access })),
    );
    set("resources", (!a.resources.is_empty()).then(|| json!(a.resources)));
    if !a.limits.is_empty() {
        entry.insert("limits".into(), limits_json(&a.limits)?);
    }
    let answer = a.conn.call("POST", "/v1/keys", Some(Value::Object(entry)))?;
    print_secret(&a.conn, &answer, "created")
}

fn list(a: &ListArgs) -> Result<ExitCode, String> {
    let mut query = Vec::new();
    if let Some(owner) = &a.owner {
        query.push(format!("owner={}", segment(owner)));
    }
    if let Some(limit) = a.limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(after) = &a.after {
        query.push(format!("after={}", segment(after)));
    }
    if let Some(since) = &a.unused_since {
        query.push(format!("unused_since={}", segment(since)));
    }
    let path =
        if query.is_empty() { "/v1/keys".into() } else { format!("/v1/keys?{}", query.join("&")) };
    let answer = a.conn.call("GET", &path, None)?;
    if a.conn.json {
        println!("{}", answer.text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let entries = answer.json.get("entries").and_then(Value::as_array).cloned().unwrap_or_default();
    let leaked = answer.json.get("leaked").and_then(Value::as_array).cloned().unwrap_or_default();
    for e in &entries {
        let was_leaked = e.get("id").is_some_and(|id| leaked.contains(id));
        println!("{}{}", summary(e), if was_leaked { "  LEAKED" } else { "" });
    }
    if entries.is_empty() {
        println!("no keys");
    }
    if let Some(next) = answer.json.get("next").and_then(Value::as_str) {
        println!("more: keygate keys list --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One line a key: id, then what sets it apart.
fn summary(e: &Value) -> String {
    let field = |name: &str| e.get(name).and_then(Value::as_str);
    let mut line = field("id").unwrap_or("?").to_string();
    if let Some(name) = field("name") {
        line.push_str(&format!("  {name:?}"));
    }
    if let Some(owner) = field("owner") {
        line.push_str(&format!("  owner {owner}"));
    }
    if let Some(origins) = e.pointer("/cors/allowed_origins").and_then(Value::as_array) {
        let list: Vec<&str> = origins.iter().filter_map(Value::as_str).collect();
        line.push_str(&format!("  cors {}", list.join(" ")));
    }
    if let Some(t) = field("expires_at") {
        line.push_str(&format!("  expires {t}"));
    }
    if let Some(t) = field("last_used_at") {
        line.push_str(&format!("  used {t}"));
    }
    if let Some(limits) = e.get("limits") {
        line.push_str(&format!("  limits {}", limit_arg::summary(limits)));
    }
    if e.get("disabled").and_then(Value::as_bool) == Some(true) {
        line.push_str("  DISABLED");
    }
    line
}

fn update(a: &UpdateArgs) -> Result<ExitCode, String> {
    let mut patch = match &a.patch {
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            _ => return Err("--patch: expected a JSON object (a merge patch)".into()),
        },
        None => Map::new(),
    };
    let mut set = |field: &str, value: Option<Value>| {
        if let Some(v) = value {
            patch.insert(field.into(), v);
        }
    };
    set("name", a.name.clone().map(Value::from));
    set("owner", a.owner.clone().map(Value::from));
    set("not_before", a.not_before.clone().map(Value::from));
    set("expires_at", a.expires_at.clone().map(Value::from));
    set("disabled", a.disable.then_some(Value::Bool(true)));
    set("disabled", a.enable.then_some(Value::Null));
    set("cors", (!a.cors_origins.is_empty()).then(|| json!({ "allowed_origins": a.cors_origins })));
    set("limits", a.no_limits.then_some(Value::Null));
    if !a.limits.is_empty() {
        patch.insert("limits".into(), limits_json(&a.limits)?);
    }
    if patch.is_empty() {
        return Err("nothing to change: give --patch JSON or an option such as --disable".into());
    }
    let path = format!("/v1/keys/{}", segment(&a.id));
    let answer = a.conn.call("PATCH", &path, Some(Value::Object(patch)))?;
    print_entry(&a.conn, &answer, "updated ");
    Ok(ExitCode::SUCCESS)
}

fn rotate(a: &RotateArgs) -> Result<ExitCode, String> {
    let mut body = json!({ "grace_seconds": a.grace_seconds });
    if let (Some(id), Some(map)) = (&a.new_id, body.as_object_mut()) {
        map.insert("id".into(), Value::from(id.as_str()));
    }
    let answer = a.conn.call("POST", &format!("/v1/keys/{}/rotate", segment(&a.id)), Some(body))?;
    let code = print_secret(&a.conn, &answer, "successor")?;
    if !a.conn.json {
        println!("{} keeps working for {} s, then expires", a.id, a.grace_seconds);
    }
    Ok(code)
}

/// The one place a secret is printed: once, right after the service made it.
fn print_secret(conn: &Connection, answer: &Answer, what: &str) -> Result<ExitCode, String> {
    if conn.json {
        println!("{}", answer.text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let key = answer.json.get("key").and_then(Value::as_str).unwrap_or("?");
    println!("key (shown once, store it now): {key}");
    print_entry(conn, answer, &format!("{what} "));
    Ok(ExitCode::SUCCESS)
}

fn print_entry(conn: &Connection, answer: &Answer, what: &str) {
    if conn.json {
        println!("{}", answer.text.trim_end());
        return;
    }
    let entry = answer.json.get("entry").cloned().unwrap_or(Value::Null);
    println!("{what}{}", summary(&entry));
    println!("{entry}");
    for leak in answer.json.get("leaks").and_then(Value::as_array).into_iter().flatten() {
        let field = |name: &str| leak.get(name).and_then(Value::as_str).unwrap_or("?");
        println!(
            "leaked: reported {} by {} ({}): {}",
            field("time"),
            field("reporter"),
            field("action"),
            field("source")
        );
    }
}
