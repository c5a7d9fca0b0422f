//! Access rules: `{ "methods": [...], "paths": [...] }`, compiled into templates that are
//! matched segment by segment, with no allocation per request.

use crate::core::config::RawRule;
use crate::core::path;
use hashbrown::HashSet;

/// The resource ids a key is scoped to (`resources`).
pub type Resources = HashSet<Box<[u8]>>;

/// What a rule set says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    EndpointDenied,
    ResourceDenied,
}

/// An ordered list of rules; a request is allowed when any rule allows it.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    methods: Methods,
    templates: Vec<Template>,
}

#[derive(Debug, Clone)]
enum Methods {
    Any,
    Only(Vec<Box<[u8]>>),
}

#[derive(Debug, Clone)]
struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(Box<[u8]>),
    /// `{name}`: exactly one non-empty segment, captured for the `resources` check.
    Param,
    /// `*` as the last segment: zero or more further segments.
    Rest,
}

/// Why one rule in the configuration is not valid; the caller adds the JSON path prefix.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleError {
    pub path: String,
    pub reason: String,
}

impl RuleSet {
    /// Compiles raw rules; errors name the path below the rule list (`[1].paths[0]`).
    pub fn compile(raw: &[RawRule]) -> Result<RuleSet, RuleError> {
        let mut rules = Vec::with_capacity(raw.len());
        for (i, RawRule { methods, paths }) in raw.iter().enumerate() {
            let methods = compile_methods(methods)
                .map_err(|(at, reason)| RuleError { path: format!("[{i}].methods{at}"), reason })?;
            if paths.is_empty() {
                return Err(RuleError {
                    path: format!("[{i}].paths"),
                    reason: "expected at least one path".into(),
                });
            }
            let mut templates = Vec::with_capacity(paths.len());
            for (j, p) in paths.iter().enumerate() {
                templates.push(
                    compile_template(p).map_err(|reason| RuleError {
                        path: format!("[{i}].paths[{j}]"),
                        reason,
                    })?,
                );
            }
            rules.push(Rule { methods, templates });
        }
        Ok(RuleSet { rules })
    }

    /// Whether any rule allows the method on the path, with no resource scoping.
    /// `path` must come from [`path::matchable`].
    pub fn allows(&self, method: &[u8], path: &[u8]) -> bool {
        self.check(method, path, None) == Access::Allowed
    }

    /// The rule-set decision for a request. `path` must come from [`path::matchable`].
    /// With `resources`, every `{name}` captured by the matching rule must be in it.
    pub fn check(&self, method: &[u8], path: &[u8], resources: Option<&Resources>) -> Access {
        let mut verdict = Access::EndpointDenied;
        for rule in &self.rules {
            if !rule.methods.contains(method) {
                continue;
            }
            for template in &rule.templates {
                match template.matches(path, resources) {
                    Access::Allowed => return Access::Allowed,
                    Access::ResourceDenied => verdict = Access::ResourceDenied,
                    Access::EndpointDenied => {}
                }
            }
        }
        verdict
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule captures a `{name}`: `resources` only make sense then.
    pub fn has_params(&self) -> bool {
        self.rules.iter().any(|r| {
            r.templates.iter().any(|t| t.segments.iter().any(|s| matches!(s, Segment::Param)))
        })
    }
}

impl Methods {
    fn contains(&self, method: &[u8]) -> bool {
        match self {
            Methods::Any => true,
            Methods::Only(list) => list.iter().any(|m| **m == *method),
        }
    }
}

impl Template {
    fn matches(&self, path: &[u8], resources: Option<&Resources>) -> Access {
        let mut actual = path::segments(path);
        let mut resources_ok = true;
        for expected in &self.segments {
            match expected {
                Segment::Rest => return scoped(resources_ok),
                Segment::Literal(lit) => {
                    if actual.next() != Some(lit) {
                        return Access::EndpointDenied;
                    }
                }
                Segment::Param => match actual.next() {
                    None => return Access::EndpointDenied,
                    Some(value) => {
                        resources_ok &= resources.is_none_or(|r| r.contains(value));
                    }
                },
            }
        }
        if actual.next().is_some() {
            return Access::EndpointDenied;
        }
        scoped(resources_ok)
    }
}

fn scoped(resources_ok: bool) -> Access {
    if resources_ok {
        Access::Allowed
    } else {
        Access::ResourceDenied
    }
}

/// Errors carry the path suffix below `methods` (`""` or `[k]`) and the reason.
fn compile_methods(raw: &[String]) -> Result<Methods, (String, String)> {
    if raw.is_empty() {
        return Err((String::new(), "expected at least one method".into()));
    }
    if raw.iter().any(|m| m == "*") {
        if raw.len() > 1 {
            return Err((String::new(), "\"*\" cannot be combined with other methods".into()));
        }
        return Ok(Methods::Any);
    }
    let mut list = Vec::with_capacity(raw.len());
    for (k, m) in raw.iter().enumerate() {
        let valid = !m.is_empty()
            && m.len() <= 32
            && m.bytes().all(|c| c.is_ascii_uppercase() || c == b'-' || c == b'_');
        if !valid {
            return Err((
                format!("[{k}]"),
                "expected an upper-case HTTP method such as \"GET\", or \"*\"".into(),
            ));
        }
        list.push(m.as_bytes().into());
    }
    Ok(Methods::Only(list))
}

fn compile_template(raw: &str) -> Result<Template, String> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err("a path template must start with \"/\"".into());
    };
    let mut segments = Vec::new();
    if rest.is_empty() {
        return Ok(Template { segments });
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for (n, part) in parts.iter().enumerate() {
        let segment = if *part == "*" {
            if n + 1 != parts.len() {
                return Err("\"*\" is only allowed as the last segment".into());
            }
            Segment::Rest
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let valid =
                !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
            if !valid {
                return Err(format!(
                    "bad parameter segment {part:?}: expected {{name}} with letters, digits or _"
                ));
            }
            Segment::Param
        } else if part.is_empty() {
            return Err("empty segment (\"//\" or a trailing \"/\")".into());
        } else if part.contains(['{', '}', '*']) || !path::is_safe_segment(part.as_bytes()) {
            return Err(format!(
                "segment {part:?} can never match a safe request path (dot segments, %-encoded separators, \\, ;, # and {{ }} * inside a segment are not allowed)"
            ));
        } else {
            Segment::Literal(part.as_bytes().into())
        };
        segments.push(segment);
    }
    Ok(Template { segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(methods: &[&str], paths: &[&str]) -> RawRule {
        RawRule {
            methods: methods.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rules(list: &[(&[&str], &[&str])]) -> RuleSet {
        let owned: Vec<RawRule> = list.iter().map(|(m, p)| raw(m, p)).collect();
        match RuleSet::compile(&owned) {
            Ok(r) => r,
            Err(e) => unreachable!("{e:?}"),
        }
    }

    fn compile_err(m: &[&str], p: &[&str]) -> RuleError {
        match RuleSet::compile(&[raw(m, p)]) {
            Ok(_) => unreachable!("{m:?} {p:?} compiled"),
            Err(e) => e,
        }
    }

    #[test]
    fn literal_param_and_rest_segments() {
        let set = rules(&[
            (&["GET", "PATCH"], &["/api/stream/{id}", "/data/views/{id}/total"]),
            (&["POST"], &["/api/stream"]),
            (&["*"], &["/files/*"]),
            (&["GET"], &["/"]),
        ]);
        assert!(set.allows(b"GET", b"/api/stream/abc"));
        assert!(set.allows(b"PATCH", b"/api/stream/abc"));
        assert!(!set.allows(b"POST", b"/api/stream/abc"));
        assert!(!set.allows(b"get", b"/api/stream/abc"));
        assert!(!set.allows(b"GET", b"/api/stream"));
        assert!(!set.allows(b"GET", b"/api/stream/abc/def"));
        assert!(!set.allows(b"GET", b"/API/stream/abc"));
        assert!(set.allows(b"GET", b"/data/views/x/total"));
        assert!(set.allows(b"POST", b"/api/stream"));
        assert!(set.allows(b"DELETE", b"/files"));
        assert!(set.allows(b"PUT", b"/files/a/b/c"));
        assert!(!set.allows(b"PUT", b"/filesx"));
        assert!(set.allows(b"GET", b"/"));
        assert!(!set.allows(b"POST", b"/"));
    }

    #[test]
    fn resources_scope_captured_ids_only() {
        let set = rules(&[
            (&["GET"], &["/api/stream/{id}", "/api/stream/{id}/sessions"]),
            (&["POST"], &["/api/stream"]),
        ]);
        let scope: Resources = [b"s1".as_slice().into()].into_iter().collect();
        assert_eq!(set.check(b"GET", b"/api/stream/s1", Some(&scope)), Access::Allowed);
        assert_eq!(set.check(b"GET", b"/api/stream/s2", Some(&scope)), Access::ResourceDenied);
        assert_eq!(
            set.check(b"GET", b"/api/stream/s2/sessions", Some(&scope)),
            Access::ResourceDenied
        );
        assert_eq!(set.check(b"POST", b"/api/stream", Some(&scope)), Access::Allowed);
        assert_eq!(set.check(b"DELETE", b"/api/stream/s1", Some(&scope)), Access::EndpointDenied);
        assert_eq!(set.check(b"GET", b"/api/stream/s2", None), Access::Allowed);
    }

    #[test]
    fn invalid_rules_name_their_place() {
        let e = compile_err(&["GET"], &["/files/*/x"]);
        assert_eq!(e.path, "[0].paths[0]");
        assert!(e.reason.contains("last segment"));
        assert_eq!(compile_err(&["get"], &["/x"]).path, "[0].methods[0]");
        assert_eq!(compile_err(&["*", "GET"], &["/x"]).path, "[0].methods");
        assert_eq!(compile_err(&[], &["/x"]).path, "[0].methods");
        assert_eq!(compile_err(&["GET"], &[]).path, "[0].paths");
        for bad in [
            "x", "", "/a//b", "/a/", "/a/../b", "/a/{}", "/a/{b", "/a/b*", "/a/%2e", "/a;b",
            "/{a-b}",
        ] {
            compile_err(&["GET"], &[bad]);
        }
    }
}
