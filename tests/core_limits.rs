//! A key's `limits`: refused with path and reason like every field, and forwarded to the
//! rate-limit service as one header value that reads back to the same limits.

mod common;

use common::{config_error, hex, policy};
use keygate::core::keytable::sha256;
use keygate::core::limits::{parse_header, OWNER_ONLY};
use keygate::core::remote::protocol::parse_key;

fn key_limits(limits_json: &str) -> Option<String> {
    let h = hex("k");
    let p = policy(&format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","limits":{limits_json}}}]}}"#));
    p.keys.lookup(b"k").and_then(|k| k.limits.as_deref().map(str::to_string))
}

#[test]
fn limits_are_refused_with_path_and_reason() {
    let h = hex("k");
    let entry =
        |limits: &str| format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","limits":{limits}}}]}}"#);
    let cases = [
        (
            r#"[{"requests":0,"per":"minute"}]"#,
            "keys[0].limits[0].requests: expected 1 to 1000000000000",
        ),
        (
            r#"[{"requests":1000000000001,"per":"minute"}]"#,
            "keys[0].limits[0].requests: expected 1 to 1000000000000",
        ),
        (
            r#"[{"name":"a b","requests":1,"per":"minute"}]"#,
            "keys[0].limits[0].name: expected 1-64 characters of A-Z a-z 0-9 . _ -",
        ),
        (
            r#"[{"name":"","requests":1,"per":"minute"}]"#,
            "keys[0].limits[0].name: expected 1-64 characters of A-Z a-z 0-9 . _ -",
        ),
        (
            r#"[{"name":"x","requests":1,"per":"minute"},{"name":"x","requests":5,"per":"day"}]"#,
            r#"keys[0].limits[1].name: a limit named "x" is already in the list (name one of them)"#,
        ),
        (
            r#"[{"requests":10,"per":"minute"},{"requests":10,"per":"minute"}]"#,
            r#"keys[0].limits[1].per: a limit named "10/minute" is already in the list (name one of them)"#,
        ),
    ];
    for (limits, expected) in cases {
        assert_eq!(config_error(&entry(limits)), expected, "{limits}");
    }
    let many = vec![r#"{"requests":1,"per":"day"}"#; 17].join(",");
    assert_eq!(config_error(&entry(&format!("[{many}]"))), "keys[0].limits: at most 16 limits");
    assert!(config_error(&entry(r#"[{"requests":1,"per":"week"}]"#)).starts_with(
        "keys[0].limits[0].per: unknown variant, expected one of `second`, `minute`, `hour`, `day`"
    ));
    let unknown = config_error(&entry(r#"[{"requests":1,"per":"day","burst":2}]"#));
    assert!(unknown.starts_with("keys[0].limits[0]"), "{unknown}");
    assert!(unknown.contains("unknown field `burst`"), "{unknown}");
}

#[test]
fn the_forwarded_value_reads_back_to_the_same_limits() {
    let Some(value) = key_limits(
        r#"[{"name":"per-minute","requests":100,"per":"minute"},{"requests":100000,"per":"day"}]"#,
    ) else {
        unreachable!("a limited key forwards its limits")
    };
    assert_eq!(value, "per-minute=100/minute,100000/day");
    let Ok(back) = parse_header(&value) else { unreachable!("{value} reads back") };
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].label(), "per-minute");
    assert_eq!((back[0].requests, back[0].per.seconds()), (100, 60));
    assert_eq!(back[1].label(), "100000/day");
    assert_eq!((back[1].requests, back[1].per.seconds()), (100_000, 86_400));
}

#[test]
fn a_key_without_limits_forwards_nothing() {
    assert_eq!(key_limits("[]"), None);
    let h = hex("k");
    let p = policy(&format!(r#"{{"keys":[{{"id":"a","sha256":"{h}"}}]}}"#));
    assert!(p.keys.lookup(b"k").is_some_and(|k| k.limits.is_none()));
}

#[test]
fn only_well_formed_values_are_read() {
    assert_eq!(parse_header(OWNER_ONLY), Ok(vec![]));
    for bad in [
        "",
        "100",
        "100/week",
        "0/minute",
        "01/minute",
        "-1/minute",
        "1000000000001/day",
        "a b=1/day",
        "=1/day",
        "1/day,",
        "1/day,,2/day",
        "99999999999999999999/day",
    ] {
        assert!(parse_header(bad).is_err(), "{bad:?}");
    }
    let seventeen = vec!["1/day"; 17].join(",");
    assert_eq!(parse_header(&seventeen), Err("too many limits"));
}

#[test]
fn an_owner_with_limits_makes_its_keys_limited() {
    let digest = sha256(b"kg_remote");
    let h: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let answer = |owner: &str, limits: &str, limited: &str| {
        format!(
            r#"{{"sha256":"{h}","key":{{"id":"r","owner":"{owner}"{limits}}},"limited_owners":[{limited}]}}"#
        )
    };
    let limits = |body: String| match parse_key(body.as_bytes(), &digest) {
        Ok(entry) => entry.key.limits.map(|l| l.to_string()),
        Err(e) => unreachable!("answer refused: {e}"),
    };
    assert_eq!(limits(answer("acme", "", r#""acme""#)).as_deref(), Some(OWNER_ONLY));
    assert_eq!(limits(answer("acme", "", r#""other""#)), None);
    let own = r#","limits":[{"requests":5,"per":"second"}]"#;
    assert_eq!(limits(answer("acme", own, r#""acme""#)).as_deref(), Some("5/second"));
}
