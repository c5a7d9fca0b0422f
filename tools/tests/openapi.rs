//! The admin API's OpenAPI document against the real `keygate serve` on SQLite: every route
//! the admin router serves is documented, and every documented path and method is served,
//! answering with a status the document lists.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

const TOKEN: &str = "kg_openapi_test_admin_token";
/// The SHA-256 of [`TOKEN`].
const TOKEN_SHA256: &str = "2feee45806bcb69256d3ba654c6622c2f9612fdf4fabbf629b7c37246891e942";

/// A running `keygate serve` on a fresh SQLite file; stopped when dropped.
struct Service {
    child: Child,
    /// Kept open: the service's stdout.
    _stdout: BufReader<ChildStdout>,
    admin: String,
    dir: std::path::PathBuf,
}

impl Service {
    fn start(name: &str) -> Service {
        let dir =
            std::env::temp_dir().join(format!("keygate-openapi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            unreachable!("{}: {e}", dir.display());
        }
        let db = format!("sqlite:{}", dir.join("keys.db").display());
        let spawned = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["serve", "--db", &db, "--admin-listen", "127.0.0.1:0"])
            .args(["--filter-listen", "127.0.0.1:0", "--ratelimit-listen", "127.0.0.1:0"])
            .env("KEYGATE_ADMIN_TOKEN_SHA256", token_sha256())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => unreachable!("spawn keygate serve: {e}"),
        };
        let Some(stdout) = child.stdout.take() else { unreachable!("no stdout") };
        let mut stdout = BufReader::new(stdout);
        // "keygate serve: admin http://127.0.0.1:PORT, filter http://..., db ..."
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let admin = line
            .split("admin ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_default()
            .to_string();
        let service = Service { child, _stdout: stdout, admin, dir };
        assert!(service.admin.starts_with("http://127.0.0.1:"), "start-up line: {line:?}");
        service
    }

    /// One call: the status and the body as JSON (`null` when it is not JSON).
    fn call(&self, method: &str, path: &str, token: bool, body: Option<&Value>) -> (u16, Value) {
        let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30)).build();
        let mut request = agent.request(method, &format!("{}{path}", self.admin));
        if token {
            request = request.set("authorization", &format!("Bearer {TOKEN}"));
        }
        let result = match body {
            Some(b) => request.set("content-type", "application/json").send_string(&b.to_string()),
            None => request.call(),
        };
        let (status, text) = match result {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap_or_default()),
            Err(ureq::Error::Transport(t)) => unreachable!("{method} {path}: {t}"),
        };
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn document(&self) -> Value {
        let (status, doc) = self.call("GET", "/v1/openapi.json", false, None);
        assert_eq!(status, 200);
        doc
    }

    /// A new key; its id.
    fn new_key(&self) -> String {
        let (status, body) = self.call("POST", "/v1/keys", true, Some(&json!({})));
        assert_eq!(status, 201, "{body}");
        body["entry"]["id"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn token_sha256() -> String {
    // Computed by the filter's own digest, so the constant above is checked too.
    let digest = keygate::core::hex::encode(&keygate::core::keytable::sha256(TOKEN.as_bytes()));
    assert_eq!(digest, TOKEN_SHA256);
    digest
}

/// Every `(METHOD, path)` the document lists.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().cloned().unwrap_or_default() {
        for method in
            item.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()
        {
            all.insert((method.to_uppercase(), path.clone()));
        }
    }
    all
}

#[test]
fn every_route_the_admin_router_serves_is_documented() {
    let service = Service::start("routes");
    let doc = service.document();
    assert_eq!(doc["openapi"], "3.1.0");
    let served: BTreeSet<(String, String)> =
        keygate_tools::serve::admin_routes().into_iter().collect();
    assert!(served.contains(&("POST".into(), "/v1/keys/{id}/rotate".into())), "{served:?}");
    assert_eq!(documented(&doc), served);
}

#[test]
fn every_documented_route_answers_with_a_documented_status() {
    let service = Service::start("answers");
    let doc = service.document();
    for (method, path) in documented(&doc) {
        let id = service.new_key();
        let limits = json!({"limits": [{"requests": 1, "per": "day"}]});
        if path.contains("{owner}") {
            // An owner with limits, so that reading or removing them finds them.
            let (status, _) = service.call("PUT", "/v1/owners/probe", true, Some(&limits));
            assert!(status == 200 || status == 201, "PUT /v1/owners/probe: {status}");
        }
        let concrete = path.replace("{id}", &id).replace("{owner}", "probe");
        let body = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/keys/{id}/rotate") => Some(json!({"grace_seconds": 60})),
            ("PUT", "/v1/owners/{owner}") => Some(limits.clone()),
            ("POST", _) => Some(json!({"owner": "probe"})),
            ("PATCH", _) => Some(json!({"owner": "probe"})),
            _ => None,
        };
        let secured = doc["paths"][&path][method.to_lowercase()].get("security").is_some();
        let (status, answer) = service.call(&method, &concrete, secured, body.as_ref());
        assert!(status != 404 && status != 405, "{method} {path}: {status} {answer}");
        let listed = &doc["paths"][&path][method.to_lowercase()]["responses"];
        assert!(
            listed.get(status.to_string()).is_some(),
            "{method} {path}: {status} is not among the documented {listed}"
        );
        // GitHub's reports are signed, not tokened: unsigned, they are refused (401 when the
        // service takes them, 503 here, where it was started without --github-keys).
        if secured && path != "/v1/leaks/github" {
            let (status, answer) = service.call(&method, &concrete, false, body.as_ref());
            assert_eq!(status, 401, "{method} {path} without a token: {answer}");
            assert!(listed.get("401").is_some(), "{method} {path}: 401 is not documented");
        }
    }
}

#[test]
fn nothing_undocumented_is_served_on_a_documented_path() {
    let service = Service::start("methods");
    let doc = service.document();
    let listed = documented(&doc);
    let paths: BTreeSet<String> = listed.iter().map(|(_, p)| p.clone()).collect();
    for path in paths {
        let concrete = path.replace("{id}", "some-key");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if !listed.contains(&(method.to_string(), path.clone())) {
                let (status, answer) = service.call(method, &concrete, true, None);
                assert_eq!(status, 405, "{method} {path}: {answer}");
            }
        }
    }
    let (status, answer) = service.call("GET", "/v1/undocumented", true, None);
    assert_eq!((status, &answer["message"]), (404, &json!("no such resource")));
}
