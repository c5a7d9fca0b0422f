//! `--limit 100/minute` (or `--limit per-minute=100/minute`): one limit as the command line
//! writes it, read by the filter's own parser and sent as the JSON the admin API takes.

use keygate::core::limits::parse_header;
use serde_json::{json, Value};

/// The JSON list for these `--limit` values.
pub fn limits_json(args: &[String]) -> Result<Value, String> {
    let mut list = Vec::with_capacity(args.len());
    for arg in args {
        let parsed = parse_header(arg)
            .ok()
            .filter(|l| l.len() == 1)
            .ok_or_else(|| format!("--limit {arg:?}: expected REQUESTS/PER or NAME=REQUESTS/PER, PER one of second, minute, hour, day"))?;
        for limit in parsed {
            let mut one = json!({ "requests": limit.requests, "per": limit.per.name() });
            if let (Some(name), Some(map)) = (&limit.name, one.as_object_mut()) {
                map.insert("name".into(), Value::from(name.as_ref()));
            }
            list.push(one);
        }
    }
    Ok(Value::Array(list))
}

/// `per-minute 100/minute, 100000/day` for a line of output.
pub fn summary(limits: &Value) -> String {
    let Some(list) = limits.as_array() else { return String::new() };
    let one = |l: &Value| {
        let requests = l.get("requests").and_then(Value::as_u64).unwrap_or(0);
        let per = l.get("per").and_then(Value::as_str).unwrap_or("?");
        match l.get("name").and_then(Value::as_str) {
            Some(name) => format!("{name}={requests}/{per}"),
            None => format!("{requests}/{per}"),
        }
    };
    list.iter().map(one).collect::<Vec<_>>().join(", ")
}
