//! `keygate usage` (totals per owner and the top keys) and `keygate keys usage ID` (one
//! key's series), read from a key service's admin API; `--json` prints its answer.
//! Times are RFC 3339 or a span back from now (`90d`, `12h`, `30m`).

use crate::cli::connection::Connection;
use crate::client::segment;
use crate::serve::rfc3339;
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Args)]
pub struct UsageArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only this owner's keys.
    #[arg(long)]
    owner: Option<String>,
    #[command(flatten)]
    window: WindowArgs,
}

#[derive(Args)]
pub struct KeyUsageArgs {
    #[command(flatten)]
    conn: Connection,
    /// The key's id.
    id: String,
    #[command(flatten)]
    window: WindowArgs,
}

#[derive(Args)]
pub struct WindowArgs {
    /// Start: RFC 3339, or a span back from now (`7d`). Default: a day before --to.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    from: Option<String>,
    /// End: RFC 3339, or a span back from now. Default: now.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    to: Option<String>,
    /// minute, hour (the default) or day.
    #[arg(long, value_name = "STEP", value_parser = ["minute", "hour", "day"])]
    step: Option<String>,
}

impl WindowArgs {
    fn query(&self, mut parts: Vec<String>) -> String {
        for (name, value) in [("from", &self.from), ("to", &self.to), ("step", &self.step)] {
            if let Some(v) = value {
                parts.push(format!("{name}={}", segment(v)));
            }
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// RFC 3339 as given, or `N` + `d`/`h`/`m` back from now, as RFC 3339.
pub fn time_arg(text: &str) -> Result<String, String> {
    if keygate::core::timestamp::parse_rfc3339(text).is_ok() {
        return Ok(text.to_string());
    }
    let how = "expected an RFC 3339 time or a span back from now such as 90d, 12h or 30m";
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let scale: i64 = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        _ => return Err(how.into()),
    };
    let n: i64 = number.parse().ok().filter(|n| (0..=100_000).contains(n)).ok_or(how)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Ok(rfc3339(now - n * scale))
}

/// `denied` is every `denied_*` result; the classes are the upstream's answers.
fn row(label: &str, requests: &Value, counts: &Value) -> String {
    let n = |name: &str| counts.get(name).and_then(Value::as_i64).unwrap_or(0);
    let denied: i64 = counts
        .as_object()
        .map(|m| {
            m.iter().filter(|(k, _)| k.starts_with("denied_")).filter_map(|(_, v)| v.as_i64()).sum()
        })
        .unwrap_or(0);
    format!(
        "{label:<22} {:>9} {:>9} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
        requests.as_i64().unwrap_or(0),
        n("allowed"),
        denied,
        n("unavailable"),
        n("public"),
        n("upstream_2xx"),
        n("upstream_3xx"),
        n("upstream_4xx"),
        n("upstream_429"),
        n("upstream_5xx"),
    )
}

fn header(first: &str) -> String {
    format!(
        "{first:<22} {:>9} {:>9} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "requests", "allowed", "denied", "503", "public", "2xx", "3xx", "4xx", "429", "5xx"
    )
}

pub fn key_usage(a: &KeyUsageArgs) -> Result<ExitCode, String> {
    let path = format!("/v1/keys/{}/usage{}", segment(&a.id), a.window.query(Vec::new()));
    let answer = a.conn.call("GET", &path, None)?;
    if a.conn.json {
        println!("{}", answer.text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let j = &answer.json;
    let text = |name: &str| j.get(name).and_then(Value::as_str).unwrap_or("never").to_string();
    println!(
        "{}  {} to {} per {}  last used {}",
        a.id,
        text("from"),
        text("to"),
        text("step"),
        text("last_used_at")
    );
    println!("{}", header("at (UTC)"));
    for p in j.get("points").and_then(Value::as_array).into_iter().flatten() {
        let at = p.get("at").and_then(Value::as_str).unwrap_or("?");
        println!("{}", row(at, &p["requests"], &p["counts"]));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: &UsageArgs) -> Result<ExitCode, String> {
    let owner = a.owner.iter().map(|o| format!("owner={}", segment(o))).collect();
    let answer = a.conn.call("GET", &format!("/v1/usage{}", a.window.query(owner)), None)?;
    if a.conn.json {
        println!("{}", answer.text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let j = &answer.json;
    let text = |name: &str| j.get(name).and_then(Value::as_str).unwrap_or("").to_string();
    println!("{} to {}", text("from"), text("to"));
    println!("{}", header(""));
    println!("{}", row("total", &j["requests"], &j["counts"]));
    let owners = j.get("owners").and_then(Value::as_array).cloned().unwrap_or_default();
    if a.owner.is_none() && !owners.is_empty() {
        println!("\n{}", header("owner"));
        for o in &owners {
            println!("{}", row(o["owner"].as_str().unwrap_or("?"), &o["requests"], &o["counts"]));
        }
    }
    let top = j.get("top_keys").and_then(Value::as_array).cloned().unwrap_or_default();
    if !top.is_empty() {
        println!("\n{}", header("top keys"));
        for k in &top {
            println!("{}", row(k["key_id"].as_str().unwrap_or("?"), &k["requests"], &k["counts"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_span_back_from_now() {
        assert_eq!(time_arg("2026-12-01T00:00:00Z"), Ok("2026-12-01T00:00:00Z".into()));
        let day_ago = time_arg("1d").unwrap_or_default();
        let t = keygate::core::timestamp::parse_rfc3339(&day_ago).unwrap_or(0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        assert!((now - 86_400_000 - t).abs() < 5_000);
        for bad in ["", "d", "1w", "-1d", "yesterday", "90"] {
            assert!(time_arg(bad).is_err(), "{bad:?}");
        }
    }
}
