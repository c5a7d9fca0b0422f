//! `keygate owners ...`: limits shared by every key of an owner, held by a key service.
//! `--json` prints the API's own answer.

use crate::cli::connection::Connection;
use crate::cli::limit_arg::{limits_json, summary};
use crate::client::segment;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum OwnersCommand {
    /// Set an owner's limits (replacing those it had).
    Set(SetArgs),
    /// List owners with limits.
    List(ListArgs),
    /// Show an owner's limits.
    Show(OwnerArgs),
    /// Remove an owner's limits: its keys keep only their own.
    Delete(OwnerArgs),
}

#[derive(Args)]
pub struct SetArgs {
    #[command(flatten)]
    conn: Connection,
    /// The owner, as keys name it.
    owner: String,
    /// A limit: REQUESTS/PER or NAME=REQUESTS/PER (repeatable), PER one of second, minute,
    /// hour, day.
    #[arg(long = "limit", value_name = "LIMIT", required = true)]
    limits: Vec<String>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct OwnerArgs {
    #[command(flatten)]
    conn: Connection,
    /// The owner.
    owner: String,
}

pub fn run(cmd: OwnersCommand) -> Result<ExitCode, String> {
    match cmd {
        OwnersCommand::Set(a) => {
            let body = json!({ "limits": limits_json(&a.limits)? });
            let path = format!("/v1/owners/{}", segment(&a.owner));
            let answer = a.conn.call("PUT", &path, Some(body))?;
            print(&a.conn, &answer.text, &answer.json);
        }
        OwnersCommand::List(a) => {
            let answer = a.conn.call("GET", "/v1/owners", None)?;
            if a.conn.json {
                println!("{}", answer.text.trim_end());
                return Ok(ExitCode::SUCCESS);
            }
            let owners = answer.json.get("owners").and_then(Value::as_array).cloned();
            let owners = owners.unwrap_or_default();
            for o in &owners {
                println!("{}", line(o));
            }
            if owners.is_empty() {
                println!("no owners with limits");
            }
        }
        OwnersCommand::Show(a) => {
            let answer = a.conn.call("GET", &format!("/v1/owners/{}", segment(&a.owner)), None)?;
            print(&a.conn, &answer.text, &answer.json);
        }
        OwnersCommand::Delete(a) => {
            a.conn.call("DELETE", &format!("/v1/owners/{}", segment(&a.owner)), None)?;
            if !a.conn.json {
                println!("removed the limits of {}", a.owner);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn line(owner: &Value) -> String {
    let name = owner.get("owner").and_then(Value::as_str).unwrap_or("?");
    format!("{name}  {}", summary(owner.get("limits").unwrap_or(&Value::Null)))
}

fn print(conn: &Connection, text: &str, json: &Value) {
    if conn.json {
        println!("{}", text.trim_end());
    } else {
        println!("{}", line(json));
    }
}
