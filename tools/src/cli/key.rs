//! `keygate key new` and `keygate key hash`: offline, on this machine. A key made here goes
//! into a static key table (the plugin configuration) as its digest; keys held by a key
//! service are `keygate keys` (`keys.rs`).

use crate::secret::new_secret;
use clap::{Args, Subcommand};
use keygate::core::hex;
use keygate::core::keytable::sha256;
use keygate::core::policy::Policy;
use keygate::core::token::bearer_key;
use serde_json::{json, Map, Value};
use std::io::Read as _;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Generate a key (256 bits from the OS random source) and its config entry.
    ///
    /// The key is printed once, as `kg_` + 43 base62 characters + a 6-character checksum;
    /// the entry holds only its SHA-256. Store the key now: it cannot be recovered from the
    /// configuration.
    New(NewArgs),
    /// Read a key from standard input and print its SHA-256 (lower-case hex).
    ///
    /// One trailing newline is ignored. The input must be a valid bearer token, since
    /// only such keys can ever be presented to the filter.
    Hash,
}

#[derive(Args)]
pub struct NewArgs {
    /// The key's id: 1-64 of A-Z a-z 0-9 . _ -
    #[arg(long)]
    id: String,
    /// Owner, forwarded upstream in the owner header.
    #[arg(long)]
    owner: Option<String>,
    /// Make it a CORS-enabled key usable from this origin (repeatable).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// RFC 3339 time from which the key is valid.
    #[arg(long, value_name = "TIME")]
    not_before: Option<String>,
    /// RFC 3339 time at which the key stops being valid.
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
}

pub fn run(cmd: KeyCommand) -> Result<ExitCode, String> {
    match cmd {
        KeyCommand::New(args) => new(&args),
        KeyCommand::Hash => hash(),
    }
}

fn new(args: &NewArgs) -> Result<ExitCode, String> {
    let key = new_secret()?;

    let mut entry = Map::new();
    entry.insert("id".into(), json!(args.id));
    entry.insert("sha256".into(), json!(hex::encode(&sha256(key.as_bytes()))));
    if let Some(owner) = &args.owner {
        entry.insert("owner".into(), json!(owner));
    }
    if let Some(t) = &args.not_before {
        entry.insert("not_before".into(), json!(t));
    }
    if let Some(t) = &args.expires_at {
        entry.insert("expires_at".into(), json!(t));
    }
    if !args.cors_origins.is_empty() {
        entry.insert(
            "cors".into(),
            json!({ "allowed_origins": args.cors_origins, "full_access": false }),
        );
    }
    let entry = Value::Object(entry);
    // Validate with the filter's own compiler, so errors read exactly as Envoy would log them.
    let config = json!({ "keys": [entry] });
    if let Err(e) = Policy::from_json(config.to_string().as_bytes()) {
        let entry_error = e.to_string();
        return Err(format!(
            "invalid key: {}",
            entry_error.strip_prefix("keys[0].").unwrap_or(&entry_error)
        ));
    }
    println!("key (shown once, store it now): {key}");
    println!("config entry:");
    println!("{entry}");
    Ok(ExitCode::SUCCESS)
}

fn hash() -> Result<ExitCode, String> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|e| format!("standard input: {e}"))?;
    let key = input.strip_suffix(b"\n").unwrap_or(&input);
    let key = key.strip_suffix(b"\r").unwrap_or(key);
    if bearer_key(&[b"Bearer ", key].concat()).is_none() {
        return Err("not a valid bearer token: 1-1024 characters of A-Z a-z 0-9 - . _ ~ + / then optional =".into());
    }
    println!("{}", hex::encode(&sha256(key)));
    Ok(ExitCode::SUCCESS)
}
