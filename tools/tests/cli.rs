//! The `keygate` binary, run as a user would.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn keygate(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = match Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => unreachable!("spawn: {e}"),
    };
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => unreachable!("wait: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file in the temporary folder, removed when the test is done with it.
struct TempFile(std::path::PathBuf);

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file(name: &str, content: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("keygate-cli-{}-{name}", std::process::id()));
    if let Err(e) = std::fs::write(&path, content) {
        unreachable!("{e}");
    }
    TempFile(path)
}

#[test]
fn key_new_prints_the_key_once_and_an_entry_with_only_its_digest() {
    let out = keygate(
        &["key", "new", "--id", "ci", "--owner", "team", "--cors-origin", "https://a.example"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let key = lines[0].strip_prefix("key (shown once, store it now): ").unwrap_or_default();
    assert!(keygate::core::keyformat::is_checksummed(key.as_bytes()), "{key}");
    assert_eq!(lines[1], "config entry:");
    let entry: serde_json::Value = serde_json::from_str(lines[2]).unwrap_or_default();
    assert_eq!(entry["id"], "ci");
    assert_eq!(entry["owner"], "team");
    assert_eq!(entry["cors"]["allowed_origins"][0], "https://a.example");
    assert!(!lines[2].contains(key));
    // The digest is the one `key hash` computes, and two runs never give the same key.
    let hashed = keygate(&["key", "hash"], format!("{key}\n").as_bytes());
    assert_eq!(text(&hashed.stdout).trim(), entry["sha256"]);
    let again = text(&keygate(&["key", "new", "--id", "ci"], b"").stdout);
    assert!(!again.contains(key));
}

#[test]
fn key_new_validates_with_the_filter_rules() {
    let out = keygate(&["key", "new", "--id", "bad id"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "keygate: invalid key: id: expected 1-64 characters of A-Z a-z 0-9 . _ -\n"
    );
    let out = keygate(&["key", "new", "--id", "a", "--cors-origin", "https://a.example/path"], b"");
    assert_eq!(
        text(&out.stderr),
        "keygate: invalid key: cors.allowed_origins[0]: expected an origin scheme://host[:port] with scheme http or https, and no path\n"
    );
    let out = keygate(&["key", "new", "--id", "a", "--expires-at", "soon"], b"");
    assert!(text(&out.stderr).starts_with("keygate: invalid key: expires_at: expected an RFC 3339"));
}

#[test]
fn key_hash() {
    let out = keygate(&["key", "hash"], b"abc\n");
    assert_eq!(
        text(&out.stdout),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
    let out = keygate(&["key", "hash"], b"abc");
    assert_eq!(
        text(&out.stdout),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
    let out = keygate(&["key", "hash"], b"has space\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("keygate: not a valid bearer token"));
    assert!(!text(&out.stderr).contains("has space"));
}

#[test]
fn check_json_and_istio_yaml() {
    let good = temp_file("good.json", r#"{"keys": [{"id": "a", "key": "dev"}]}"#);
    let out = keygate(&["check", &good.to_string_lossy()], b"");
    assert!(out.status.success());
    assert!(text(&out.stdout).ends_with(": valid: 1 keys (0 CORS-enabled), mode enforce\n"));
    assert!(text(&out.stderr).contains("warning: keys[0].key: plaintext key in the configuration"));
    assert!(!text(&out.stderr).contains("dev\""));

    let bad = temp_file("bad.json", r#"{"keys": [{"id": "a", "sha256": "12"}]}"#);
    let out = keygate(&["check", &bad.to_string_lossy()], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).ends_with(": keys[0].sha256: expected 64 hex characters\n"));

    let istio = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/wasmplugin.yaml");
    let out = keygate(&["check", istio], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("{istio}: WasmPlugin keygate: keys[1].sha256: expected 64 hex characters\n")
    );

    let envoy = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/envoy.yaml");
    let out = keygate(&["check", envoy], b"");
    assert_eq!(
        text(&out.stdout),
        format!("{envoy}: wasm filter keygate: valid: 5 keys (1 CORS-enabled), mode enforce, other keys from the key service (cluster keygate-keys)\n")
    );

    let unrelated = temp_file("other.yaml", "kind: Service\nmetadata: {name: x}\n");
    let out = keygate(&["check", &unrelated.to_string_lossy()], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no keygate configuration found"));
    let out = keygate(&["check", "/nonexistent/file.json"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).lines().count(), 1);
}

#[test]
fn explain_prints_the_verdict_without_the_key() {
    let envoy = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/envoy.yaml");
    let key = "kg_demo_web_8d3e5f1a6c";
    let run = |args: &[&str], stdin: &str| {
        text(&keygate(&[&["explain", envoy], args].concat(), stdin.as_bytes()).stdout)
    };
    let out = run(
        &[
            "--method",
            "GET",
            "--path",
            "/api/stream/nope",
            "--origin",
            "http://localhost:8080",
            "--header-stdin",
        ],
        &format!("Bearer {key}\n"),
    );
    assert_eq!(
        out,
        "outcome: denied_resource\nkey_id: demo-web-player\nstatus: 403\n\
         body: {\"error\": \"Forbidden\", \"message\": \"Resource not allowed for this API key\"}\n\
         content-type: application/json\nvary: Origin\naccess-control-allow-origin: http://localhost:8080\n"
    );
    assert!(!out.contains(key));
    let out = run(
        &["--method", "GET", "--path", "/api/stream/stream-7f3a", "--header-stdin"],
        &format!("Bearer {key}"),
    );
    assert_eq!(
        out,
        "outcome: allowed\nkey_id: demo-web-player\nstatus: upstream\n\
         forward x-api-key-id: demo-web-player\nforward x-api-key-owner: user-42\n"
    );
    // A limited key: the header Envoy's rate-limit filter reads, and the limits in words.
    let out = run(
        &["--method", "GET", "--path", "/api/x", "--header-stdin"],
        "Bearer kg_demo_limited_9c41e7d2",
    );
    assert_eq!(
        out,
        "outcome: allowed\nkey_id: demo-limited\nstatus: upstream\n\
         forward x-api-key-id: demo-limited\nforward x-api-key-owner: team-limited\n\
         forward x-api-key-limits: per-second=5/second\n\
         limits: per-second (5 per second); and its owner's, held by the key service (keygate owners show)\n"
    );
    let out = run(&["--method", "GET", "--path", "/api/stream/x"], "");
    assert!(out.starts_with("outcome: denied_missing\nkey_id: -\nstatus: 401\n"));
    assert!(out.contains("www-authenticate: Bearer\n"));
    let out = run(
        &[
            "--method",
            "OPTIONS",
            "--path",
            "/api/stream/x",
            "--origin",
            "http://localhost:8080",
            "--request-method",
            "PATCH",
        ],
        "",
    );
    assert_eq!(
        out,
        "outcome: preflight_allowed\nkey_id: -\nstatus: 204\n\
         access-control-allow-origin: http://localhost:8080\n\
         access-control-allow-methods: PATCH\n\
         access-control-allow-headers: authorization, content-type\n\
         access-control-max-age: 600\n\
         vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\n"
    );
}

#[test]
fn explain_prints_the_cors_headers_the_filter_adds() {
    let key = "kg_explain_cors_key";
    let config = temp_file(
        "cors.json",
        &format!(
            r#"{{"mode": "report",
                "keys": [{{"id": "web", "owner": "acme", "sha256": "{}",
                           "cors": {{"allowed_origins": ["https://app.example"], "full_access": true}}}}],
                "cors": {{"allow_headers": ["authorization"], "expose_headers": ["x-request-id", "x-total"],
                          "max_age_seconds": 60, "allow_credentials": true}}}}"#,
            sha_hex(key)
        ),
    );
    let path = config.to_string_lossy().into_owned();
    let run = |args: &[&str], stdin: &str| {
        let out = keygate(
            &[&["explain", &path, "--method", "GET", "--path", "/v1/x"], args].concat(),
            stdin.as_bytes(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // Forwarded from an allowed origin: the identity upstream, the CORS headers back.
    let out = run(&["--origin", "https://app.example", "--header-stdin"], &format!("Bearer {key}"));
    assert_eq!(
        out,
        "outcome: allowed\nkey_id: web\nstatus: upstream\n\
         forward x-api-key-id: web\nforward x-api-key-owner: acme\n\
         vary: Origin\naccess-control-allow-origin: https://app.example\n\
         access-control-expose-headers: x-request-id, x-total\n\
         access-control-allow-credentials: true\n"
    );
    // Report mode forwards a refusal, saying what enforce mode would have answered.
    let out =
        run(&["--origin", "https://other.example", "--header-stdin"], &format!("Bearer {key}"));
    assert_eq!(
        out,
        "outcome: denied_origin\nkey_id: web\nstatus: upstream\n\
         forward x-keygate-would-deny: denied_origin\nvary: Origin\n"
    );
    let out = run(&[], "");
    assert_eq!(
        out,
        "outcome: denied_missing\nkey_id: -\nstatus: upstream\n\
         forward x-keygate-would-deny: denied_missing\n"
    );
    // Preflights are answered in report mode too, with the credentials header.
    let out = keygate(
        &[
            "explain",
            &path,
            "--method",
            "OPTIONS",
            "--path",
            "/v1/x",
            "--origin",
            "https://app.example",
            "--request-method",
            "GET",
        ],
        b"",
    );
    assert_eq!(
        text(&out.stdout),
        "outcome: preflight_allowed\nkey_id: -\nstatus: 204\n\
         access-control-allow-origin: https://app.example\n\
         access-control-allow-methods: GET\n\
         access-control-allow-headers: authorization\n\
         access-control-max-age: 60\n\
         vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\n\
         access-control-allow-credentials: true\n"
    );
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["key", "new", "--help"],
        &["key", "hash", "--help"],
        &["check", "--help"],
        &["explain", "--help"],
        &["serve", "--help"],
        &["keys", "--help"],
        &["keys", "create", "--help"],
        &["export", "--help"],
    ] {
        let out = keygate(args, b"");
        assert!(out.status.success() && text(&out.stdout).contains("Usage: keygate"), "{args:?}");
    }
}

#[test]
fn help_tells_key_from_keys() {
    let out = text(&keygate(&["--help"], b"").stdout);
    assert!(out.contains(
        "  key      Offline, on this machine: make a key (and its config entry) or hash one\n"
    ));
    assert!(out.contains(
        "  keys     Manage the keys a key service (`keygate serve`) holds, through its admin API\n"
    ));
    assert!(text(&keygate(&["key", "--help"], b"").stdout).contains("see `keygate keys`"));
    assert!(text(&keygate(&["keys", "--help"], b"").stdout).contains("see `keygate key`"));
}

#[test]
fn check_and_explain_understand_the_key_service() {
    let config = temp_file(
        "remote.json",
        r#"{"keys": [{"id": "s", "sha256": "283cc151aa8b13657699adb7a022aff88dd1bff6587e37f520b03dc9f5617727"}],
            "key_service": {"cluster": "keygate-keys", "path_prefix": "/kg"}}"#,
    );
    let path = config.to_string_lossy().into_owned();
    let out = keygate(&["check", &path], b"");
    assert!(out.status.success());
    assert!(text(&out.stdout).ends_with(
        ": valid: 1 keys (0 CORS-enabled), mode enforce, other keys from the key service (cluster keygate-keys)\n"
    ));
    let out = keygate(
        &["explain", &path, "--method", "GET", "--path", "/x", "--header-stdin"],
        b"Bearer not-in-the-table\n",
    );
    assert_eq!(
        text(&out.stdout),
        "outcome: remote lookup\n\
         asks: GET /kg/keys/06ef2e7b4ee9dee1a4a1a2e4cf6e8ecd0a3b6eaee08d0de7be57a0d7b1c2a1c0\n\
         then: decided like a static key with the key service's answer; 503 if it cannot be had\n"
            .replace(
                "06ef2e7b4ee9dee1a4a1a2e4cf6e8ecd0a3b6eaee08d0de7be57a0d7b1c2a1c0",
                &sha_hex("not-in-the-table")
            )
    );
    assert!(!text(&out.stdout).contains("not-in-the-table"));
    let bad = temp_file(
        "remote-bad.json",
        r#"{"keys": [], "key_service": {"cluster": "k", "path_prefix": "/a/../b"}}"#,
    );
    let out = keygate(&["check", &bad.to_string_lossy()], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(": key_service.path_prefix: expected a path such as /v1/filter")
    );
}

fn sha_hex(key: &str) -> String {
    let out = keygate(&["key", "hash"], format!("{key}\n").as_bytes());
    text(&out.stdout).trim().to_string()
}
