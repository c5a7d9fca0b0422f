//! A client of the key service's admin API: one blocking HTTP call at a time, the admin
//! token in the `Authorization` header. `keygate keys` and `keygate export` use it.
//!
//! `https://` servers are verified against the system's roots, plus a certificate
//! authority of the operator's (`--ca FILE`) when the admin API sits behind a proxy with a
//! private one. Plain `http://` is for a service on this machine: sent elsewhere, the token
//! crosses the network in clear, and the client says so.

use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct Client {
    server: String,
    token: String,
    agent: ureq::Agent,
}

/// A 2xx answer: its text, and its JSON (`null` when the body is not JSON).
pub struct Answer {
    pub text: String,
    pub json: Value,
}

/// A call that got no 2xx answer.
pub struct Failure {
    /// The answer's text, when the service answered (empty when it could not be reached).
    pub text: String,
    /// One line: the status, the API's error and message and the path of a refused field,
    /// or why the service could not be reached.
    pub message: String,
}

impl Client {
    /// A client of the admin API at `server` (`http[s]://HOST:PORT`), calling with `token`;
    /// `ca` adds a certificate authority (PEM) to the system's roots.
    pub fn new(server: &str, token: String, ca: Option<&Path>) -> Result<Client, String> {
        if token.is_empty() {
            return Err("no admin token".into());
        }
        if token.bytes().any(|c| c.is_ascii_control() || c == b' ') {
            return Err("the admin token holds spaces or control characters".into());
        }
        let https = server.starts_with("https://");
        if !https && !server.starts_with("http://") {
            return Err(format!("{server}: expected an http:// or https:// URL"));
        }
        if !https && !is_loopback(server) {
            eprintln!("keygate: warning: {server} is not https: the admin token is sent in clear");
        }
        let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60));
        if let Some(ca) = ca {
            agent = agent.tls_config(Arc::new(tls_config(ca)?));
        }
        let agent = agent.build();
        Ok(Client { server: server.trim_end_matches('/').to_string(), token, agent })
    }

    /// One call; `path` starts with `/` and is already percent-encoded (see [`segment`]).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Answer, Failure> {
        let url = format!("{}{path}", self.server);
        let request = self
            .agent
            .request(method, &url)
            .set("authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => request.set("content-type", "application/json").send_string(&b.to_string()),
            None => request.call(),
        };
        let unreachable = |e: &dyn std::fmt::Display| Failure {
            text: String::new(),
            message: format!("{}: {e}", self.server),
        };
        let (status, text) = match result {
            Ok(r) => (r.status(), r.into_string().map_err(|e| unreachable(&e))?),
            Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap_or_default()),
            Err(ureq::Error::Transport(t)) => return Err(unreachable(&t)),
        };
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(Answer { text, json });
        }
        let field = |name: &str| json.get(name).and_then(Value::as_str);
        let mut message = format!("{status} {}", field("error").unwrap_or("error"));
        if let Some(m) = field("message") {
            message.push_str(&format!(": {m}"));
        }
        if let Some(p) = field("path").filter(|p| !p.is_empty()) {
            message.push_str(&format!(" (at {p})"));
        }
        Err(Failure { text, message })
    }
}

/// The system's roots and the certificates in `ca`.
fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let named = |e: &dyn std::fmt::Display| format!("--ca {}: {e}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    // A root the system lists but rustls cannot parse is skipped, as ureq does.
    for cert in rustls_native_certs::load_native_certs().unwrap_or_default() {
        let _ = roots.add(cert);
    }
    let pem = std::fs::read(ca).map_err(|e| named(&e))?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.map_err(|e| named(&e))?).map_err(|e| named(&e))?;
        added += 1;
    }
    if added == 0 {
        return Err(named(&"no PEM certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| named(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Whether an `http://` URL names this machine.
fn is_loopback(server: &str) -> bool {
    let rest = server.trim_start_matches("http://");
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => rest.split([':', '/']).next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Percent-encodes one path segment or query value.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_only_unreserved_characters() {
        assert_eq!(segment("key_1.a-b~"), "key_1.a-b~");
        assert_eq!(segment("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
    }

    #[test]
    fn a_token_must_fit_in_a_header() {
        assert!(Client::new("http://127.0.0.1:1", String::new(), None).is_err());
        assert!(Client::new("http://127.0.0.1:1", "a b".into(), None).is_err());
        assert!(Client::new("http://127.0.0.1:1", "a\n".into(), None).is_err());
        assert!(Client::new("http://127.0.0.1:1/", "kg_x".into(), None).is_ok());
    }

    #[test]
    fn only_http_and_https_urls_and_a_ca_file_must_hold_a_certificate() {
        assert!(Client::new("ftp://127.0.0.1:1", "kg_x".into(), None).is_err());
        assert!(Client::new("https://keys.example", "kg_x".into(), None).is_ok());
        let empty =
            std::env::temp_dir().join(format!("keygate-empty-ca-{}.pem", std::process::id()));
        assert!(std::fs::write(&empty, "not a certificate\n").is_ok());
        let refused = Client::new("https://keys.example", "kg_x".into(), Some(&empty));
        assert!(refused.is_err_and(|e| e.contains("no PEM certificate")));
        let _ = std::fs::remove_file(&empty);
    }

    #[test]
    fn plain_http_is_quiet_only_for_this_machine() {
        for local in ["http://127.0.0.1:9100", "http://localhost:9100/", "http://[::1]:9100"] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in
            ["http://10.0.0.7:9100", "http://keys.example", "http://127.0.0.1.evil.example"]
        {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
