//! Origins and the preflight index.
//!
//! Origins are compared byte for byte with what the browser sends, which is always the
//! serialized form: lower-case scheme and host, no default port. Configured origins are
//! normalised into that form once, at configure time.

use crate::core::window::Window;
use hashbrown::{HashMap, HashSet};

/// The origins a CORS-enabled key may be used from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `"*"`: any origin but `null`.
    Any,
    List(Vec<Box<[u8]>>),
}

impl Origins {
    pub fn allows(&self, origin: &[u8]) -> bool {
        match self {
            Origins::Any => is_real_origin(origin),
            Origins::List(list) => list.iter().any(|o| **o == *origin),
        }
    }
}

/// Whether a request's `Origin` is one any rule may allow: shaped like what browsers send
/// (`scheme://host[:port]`, lower case). `null` is what sandboxed and `file:` documents
/// send, so every attacker page can send it too: it is never allowed. Envoy joins repeated
/// `Origin` headers with a comma, and several values arrive here empty: neither matches.
pub fn is_real_origin(origin: &[u8]) -> bool {
    let Some(at) = origin.windows(3).position(|w| w == b"://") else {
        return false;
    };
    let (scheme, authority) = (&origin[..at], &origin[at + 3..]);
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_lowercase)
        && scheme
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c));
    let authority_ok = !authority.is_empty()
        && authority
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-:[]_".contains(&c));
    scheme_ok && authority_ok
}

/// Turns a configured `scheme://host[:port]` into the form browsers send.
pub fn normalize_origin(raw: &str) -> Result<String, &'static str> {
    const EXPECTED: &str =
        "expected an origin scheme://host[:port] with scheme http or https, and no path";
    let lower = raw.to_ascii_lowercase();
    if lower == "null" {
        return Err("the null origin is shared by every sandboxed page and cannot be allowed");
    }
    let (scheme, authority) = lower.split_once("://").ok_or(EXPECTED)?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(EXPECTED),
    };
    if authority.contains(['/', '?', '#', '@', '\\']) || authority.is_empty() {
        return Err(EXPECTED);
    }
    // An IPv6 literal keeps its colons inside brackets.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    };
    if !host_ok {
        return Err(EXPECTED);
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(p) if p == default_port => Ok(format!("{scheme}://{host}")),
        Some(p) => {
            let valid = !p.is_empty()
                && p.len() <= 5
                && !p.starts_with('0')
                && p.bytes().all(|c| c.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65_535);
            if !valid {
                return Err("port must be a number from 1 to 65535");
            }
            Ok(format!("{scheme}://{host}:{p}"))
        }
    }
}

/// What one active CORS key grants to an origin: its endpoint access during its window.
/// `rules == None` is full access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant {
    pub window: Window,
    pub rules: Option<u32>,
}

/// CORS keys folded by origin, so that a preflight or a 401 looks up one origin
/// instead of walking the key table. Identical grants are stored once.
#[derive(Debug, Default)]
pub struct CorsIndex {
    by_origin: HashMap<Box<[u8]>, Vec<Grant>>,
    any_origin: Vec<Grant>,
}

impl CorsIndex {
    pub fn builder() -> CorsIndexBuilder {
        CorsIndexBuilder::default()
    }

    /// The grants that apply to this origin: its own, then those of `"*"` keys.
    pub fn grants<'a>(&'a self, origin: &[u8]) -> impl Iterator<Item = &'a Grant> {
        let own = if is_real_origin(origin) {
            self.by_origin.get(origin).map(Vec::as_slice).unwrap_or_default()
        } else {
            &[]
        };
        let any: &[Grant] = if is_real_origin(origin) { &self.any_origin } else { &[] };
        own.iter().chain(any)
    }
}

#[derive(Default)]
pub struct CorsIndexBuilder {
    seen: HashSet<(Option<Box<[u8]>>, Grant)>,
    index: CorsIndex,
}

impl CorsIndexBuilder {
    pub fn add(&mut self, origins: &Origins, grant: Grant) {
        match origins {
            Origins::Any => {
                if self.seen.insert((None, grant)) {
                    self.index.any_origin.push(grant);
                }
            }
            Origins::List(list) => {
                for origin in list {
                    if self.seen.insert((Some(origin.clone()), grant)) {
                        self.index.by_origin.entry(origin.clone()).or_default().push(grant);
                    }
                }
            }
        }
    }

    pub fn build(self) -> CorsIndex {
        self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_like_browsers_send_them() {
        let ok = |raw: &str| normalize_origin(raw).unwrap_or_else(|e| e.to_string());
        assert_eq!(ok("https://App.Example.com"), "https://app.example.com");
        assert_eq!(ok("https://app.example.com:443"), "https://app.example.com");
        assert_eq!(ok("http://localhost:80"), "http://localhost");
        assert_eq!(ok("http://localhost:8080"), "http://localhost:8080");
        assert_eq!(ok("https://localhost:80"), "https://localhost:80");
        assert_eq!(ok("http://[::1]:8080"), "http://[::1]:8080");
        assert_eq!(ok("http://[::1]"), "http://[::1]");
        assert_eq!(ok("http://127.0.0.1:3000"), "http://127.0.0.1:3000");
    }

    #[test]
    fn origins_with_more_than_scheme_host_port_are_refused() {
        for bad in [
            "null",
            "NULL",
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/x",
            "https://user@app.example.com",
            "https://",
            "https://app.example.com:",
            "https://app.example.com:0",
            "https://app.example.com:65536",
            "https://app.example.com:08080",
            "https://app_example.com",
            "https://app.example.com?x",
            "*.example.com",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn null_and_empty_origins_are_never_allowed() {
        assert!(Origins::Any.allows(b"https://x.example"));
        assert!(!Origins::Any.allows(b"null"));
        assert!(!Origins::Any.allows(b""));
        assert!(!Origins::Any.allows(b"https://x.example\xff"));
        assert!(!Origins::Any.allows(b"https://x .example"));
        assert!(!Origins::Any.allows(b"https://a.example,https://a.example"));
        assert!(!Origins::Any.allows(b"https://A.example"));
        assert!(!Origins::Any.allows(b"https://a.example/"));
        assert!(Origins::Any.allows(b"chrome-extension://abcdef"));
        assert!(Origins::Any.allows(b"http://[::1]:8080"));
        let list = Origins::List(vec![b"https://a.example".as_slice().into()]);
        assert!(list.allows(b"https://a.example"));
        assert!(!list.allows(b"https://a.example:443"));
        assert!(!list.allows(b"https://A.example"));
    }

    #[test]
    fn index_deduplicates_and_adds_star_grants_to_every_real_origin() {
        let g = Grant { window: Window::default(), rules: Some(0) };
        let list = Origins::List(vec![b"https://a.example".as_slice().into()]);
        let mut b = CorsIndex::builder();
        b.add(&list, g);
        b.add(&list, g);
        b.add(&Origins::Any, Grant { rules: None, ..g });
        let index = b.build();
        assert_eq!(index.grants(b"https://a.example").count(), 2);
        assert_eq!(index.grants(b"https://b.example").count(), 1);
        assert_eq!(index.grants(b"null").count(), 0);
    }
}
