//! A client of the key service's admin API: one blocking HTTP call at a time (plain HTTP,
//! no TLS stack), the admin token in the `Authorization` header. `keygate keys` and
//! `keygate export` use it.

use serde_json::Value;
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
    /// A client of the admin API at `server` (`http://HOST:PORT`), calling with `token`.
    pub fn new(server: &str, token: String) -> Result<Client, String> {
        if token.is_empty() {
            return Err("no admin token".into());
        }
        if token.bytes().any(|c| c.is_ascii_control() || c == b' ') {
            return Err("the admin token holds spaces or control characters".into());
        }
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
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
        assert!(Client::new("http://127.0.0.1:1", String::new()).is_err());
        assert!(Client::new("http://127.0.0.1:1", "a b".into()).is_err());
        assert!(Client::new("http://127.0.0.1:1", "a\n".into()).is_err());
        assert!(Client::new("http://127.0.0.1:1/", "kg_x".into()).is_ok());
    }
}
