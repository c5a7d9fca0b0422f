//! Shared helpers for the native tests of the pure core.
#![allow(dead_code)]

use keygate::core::decide::{Header, Request};
use keygate::core::keytable::sha256;
use keygate::core::policy::Policy;
use keygate::core::verdict::Verdict;

/// The SHA-256 of `key` in hex, as a configuration entry holds it.
pub fn hex(key: &str) -> String {
    keygate::core::hex::encode(&sha256(key.as_bytes()))
}

pub fn policy(json: &str) -> Policy {
    match Policy::from_json(json.as_bytes()) {
        Ok(c) => c.policy,
        Err(e) => unreachable!("test config refused: {e}"),
    }
}

pub fn config_error(json: &str) -> String {
    match Policy::from_json(json.as_bytes()) {
        Ok(_) => unreachable!("config accepted: {json}"),
        Err(e) => e.to_string(),
    }
}

/// A request builder: `req("GET", "/x").auth("Bearer k").origin("https://a")`.
pub struct Req<'a>(pub Request<'a>);

pub fn req<'a>(method: &'a str, path: &'a str) -> Req<'a> {
    Req(Request { method: method.as_bytes(), path: path.as_bytes(), ..Request::default() })
}

impl<'a> Req<'a> {
    pub fn auth(mut self, value: &'a str) -> Self {
        self.0.authorization.push(value.as_bytes());
        self
    }
    pub fn origin(mut self, value: &'a str) -> Self {
        self.0.origin.push(value.as_bytes());
        self
    }
    pub fn preflight(mut self, method: &'a str) -> Self {
        self.0.access_control_request_method.push(method.as_bytes());
        self
    }
    pub fn decide<'p>(&self, p: &'p Policy, now_ms: i64) -> Verdict<'p> {
        p.decide(&self.0, now_ms)
    }
}

pub fn header_value(h: Header) -> Option<Vec<u8>> {
    h.value().map(<[u8]>::to_vec)
}
