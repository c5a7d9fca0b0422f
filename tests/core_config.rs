//! Every configuration error names its JSON path and reason, exactly.

mod common;

use common::{config_error, hex, policy};

#[test]
fn errors_name_path_and_reason() {
    let h = hex("k");
    let cases: Vec<(String, &str)> = vec![
        (format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","cors":{{"allowed_origins":["https://a.example","ftp://b"]}}}}]}}"#),
         "keys[0].cors.allowed_origins[1]: expected an origin scheme://host[:port] with scheme http or https, and no path"),
        (format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","cors":{{"allowed_origins":["*","https://a.example"]}}}}]}}"#),
         r#"keys[0].cors.allowed_origins: "*" must be the only entry when present"#),
        (format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","cors":{{"allowed_origins":["null"]}}}}]}}"#),
         "keys[0].cors.allowed_origins[0]: the null origin is shared by every sandboxed page and cannot be allowed"),
        (format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","resources":["x"]}}]}}"#),
         "keys[0].resources: a key with full access cannot be scoped to resources (give it rules, or a cors object without full_access)"),
        (format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","cors":{{"allowed_origins":[],"full_access":true}},"rules":[]}}]}}"#),
         "keys[0].rules: a key with cors.full_access cannot also have rules"),
        (format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","rules":[{{"methods":["GET"],"paths":["/a/*/b"]}}]}}]}}"#),
         r#"keys[0].rules[0].paths[0]: "*" is only allowed as the last segment"#),
        (r#"{"keys":[],"cors_endpoints":[{"methods":["get"],"paths":["/a"]}]}"#.into(),
         r#"cors_endpoints[0].methods[0]: expected an upper-case HTTP method such as "GET", or "*""#),
        (r#"{"keys":[],"public_endpoints":[{"methods":["GET"],"paths":["/a/"]}]}"#.into(),
         r#"public_endpoints[0].paths[0]: empty segment ("//" or a trailing "/")"#),
        (
            format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","rules":[{{"methods":["GET"],"paths":["/{{id}}"]}}],"resources":["ok","a/b"]}}]}}"#),
            "keys[0].resources[1]: not a path segment a request could carry",
        ),
        (r#"{"keys":[],"cors":{"allow_headers":["bad header"]}}"#.into(),
         "cors.allow_headers[0]: expected an HTTP header name"),
        (r#"{"keys":[],"forward":{"key_id_header":"x-a","owner_header":"x-a"}}"#.into(),
         "forward.owner_header: must differ from key_id_header"),
        (format!(r#"{{"keys":[{{"id":"a","sha256":"{h}","owner":" padded"}}]}}"#),
         "keys[0].owner: expected 1-256 printable ASCII characters"),
        (r#"{"keys":[{"id":"a","key":"has space"}]}"#.into(),
         "keys[0].key: not a valid bearer token: 1-1024 characters of A-Z a-z 0-9 - . _ ~ + / then optional ="),
    ];
    for (json, expected) in cases {
        assert_eq!(config_error(&json), expected, "{json}");
    }
}

#[test]
fn errors_at_the_root_are_named_config() {
    // Found by the config fuzz target: a root field named "" once gave an empty path.
    assert!(config_error(r#"{"":1}"#).starts_with("config: unknown field ``"));
    assert!(config_error("{").starts_with("config: EOF while parsing"));
    assert_eq!(config_error("[[]]"), "config: expected a JSON object");
    assert_eq!(config_error(" \n"), "config: empty configuration: expected a JSON object");
}

#[test]
fn values_are_never_echoed_in_schema_errors() {
    // A key pasted where an object, number or mode belongs must not reach Envoy's log.
    let secret = "kg_pasted_in_the_wrong_place";
    for (json, expected) in [
        (
            format!(r#"{{"keys":["{secret}"]}}"#),
            "keys[0]: invalid type: string, expected struct RawKey",
        ),
        (
            format!(r#"{{"keys":[],"mode":"{secret}"}}"#),
            "mode: unknown variant, expected `enforce` or `report`",
        ),
        (
            format!(r#"{{"keys":[{{"id":"a","disabled":"{secret}"}}]}}"#),
            "keys[0].disabled: invalid type: string, expected a boolean",
        ),
        (
            r#"{"keys":[{"id":"a","key":12345678}]}"#.to_string(),
            "keys[0].key: invalid type: integer, expected a string",
        ),
    ] {
        let err = config_error(&json);
        assert!(err.starts_with(expected), "{err}");
        assert!(!err.contains(secret) && !err.contains("12345678"), "{err}");
    }
}

#[test]
fn segments_no_request_can_carry_are_refused() {
    let h = hex("k");
    let err = config_error(
        r#"{"keys":[],"public_endpoints":[{"methods":["GET"],"paths":["/healthz?full"]}]}"#,
    );
    assert!(
        err.starts_with("public_endpoints[0].paths[0]: segment \"healthz?full\" can never match"),
        "{err}"
    );
    let err = config_error(&format!(
        r#"{{"keys":[{{"id":"a","sha256":"{h}","rules":[{{"methods":["GET"],"paths":["/{{id}}"]}}],"resources":["a?b"]}}]}}"#
    ));
    assert_eq!(err, "keys[0].resources[0]: not a path segment a request could carry");
}

#[test]
fn defaults_and_normalisation() {
    let p = policy(&format!(
        r#"{{"keys":[{{"id":"a","sha256":"{}","cors":{{"allowed_origins":["HTTPS://A.Example:443"]}}}}]}}"#,
        hex("k")
    ));
    assert_eq!(&*p.cors.allow_headers, "authorization, content-type");
    assert_eq!(&*p.cors.max_age, "600");
    assert!(p.cors.expose_headers.is_none() && !p.cors.allow_credentials);
    assert_eq!(&*p.forward.key_id_header, "x-api-key-id");
    assert!(!p.needs_clock);
    assert!(p.cors_index.grants(b"https://a.example").next().is_some());
}

#[test]
fn the_plaintext_key_is_never_in_a_warning_or_an_error() {
    let secret = "s3cr3t-dev-key";
    match keygate::core::policy::Policy::from_json(
        format!(r#"{{"keys":[{{"id":"a","key":"{secret}"}}]}}"#).as_bytes(),
    ) {
        Ok(c) => assert!(c.warnings.iter().all(|w| !w.contains(secret)) && c.warnings.len() == 1),
        Err(e) => unreachable!("{e}"),
    }
    let err = config_error(&format!(
        r#"{{"keys":[{{"id":"a","key":"{secret}"}},{{"id":"b","key":"{secret}"}}]}}"#
    ));
    assert_eq!(err, "keys[1].key: same key as keys[0]");
}

#[test]
fn usage_needs_a_key_service_and_bounded_settings() {
    let ks = r#""key_service":{"cluster":"keys"}"#;
    for (json, expected) in [
        (r#"{"keys":[],"usage":{}}"#.to_string(), "usage: needs key_service: the counts are sent to the key service's cluster"),
        (format!(r#"{{"keys":[],{ks},"usage":{{"flush_ms":999}}}}"#), "usage.flush_ms: expected 1000 to 600000"),
        (format!(r#"{{"keys":[],{ks},"usage":{{"max_keys":0}}}}"#), "usage.max_keys: expected 1 to 1000000"),
        (format!(r#"{{"keys":[],{ks},"usage":{{"flush":5}}}}"#), "usage.flush: unknown field `flush`, expected one of `flush_ms`, `max_keys`, `upstream_status` at line 1 column 60"),
    ] {
        assert_eq!(config_error(&json), expected, "{json}");
    }
    let p = policy(&format!(r#"{{"keys":[],{ks},"usage":{{}}}}"#));
    assert_eq!(p.usage, Some(keygate::core::usage::UsageSettings::default()));
    let p = policy(&format!(
        r#"{{"keys":[],{ks},"usage":{{"flush_ms":2000,"max_keys":5,"upstream_status":false}}}}"#
    ));
    assert_eq!(
        p.usage,
        Some(keygate::core::usage::UsageSettings {
            flush_ms: 2_000,
            max_keys: 5,
            upstream_status: false
        })
    );
    assert_eq!(policy(&format!(r#"{{"keys":[],{ks}}}"#)).usage, None);
}
