//! Raw configuration → [`Policy`]: every check that needs more than the JSON schema, each
//! failure named by its JSON path, and the lookup structures built in the same pass.

use crate::core::config::{
    ConfigError, RawCors, RawForward, RawKey, RawKeyFormat, RawKeyService, RawRest, RawUsage,
};
use crate::core::cors::{CorsIndex, CorsIndexBuilder, Grant};
use crate::core::entry::{check_id, rule_set, Entry};
use crate::core::hex;
use crate::core::keyformat::KeyFormat;
use crate::core::keytable::{sha256, Digest, Endpoints, Key, KeyTable};
use crate::core::policy::{
    CacheSettings, Compiled, CorsHeaders, Forward, KeyService, Policy, CORS_ENDPOINTS,
};
use crate::core::rules::RuleSet;
use crate::core::usage::UsageSettings;
use crate::core::{parse, path, token};

impl Policy {
    /// Parses and compiles a plugin configuration; all or nothing.
    pub fn from_json(json: &[u8]) -> Result<Compiled, ConfigError> {
        let mut compiler = Compiler::default();
        let rest = parse::parse(json, &mut compiler)?;
        compiler.finish(rest)
    }
}

/// Compiles keys one at a time, as the parser yields them, then the rest of the config.
pub struct Compiler {
    keys: KeyTable,
    /// Index [`CORS_ENDPOINTS`] is filled in by [`Compiler::finish`].
    rule_sets: Vec<RuleSet>,
    cors_index: CorsIndexBuilder,
    needs_clock: bool,
    warnings: Vec<String>,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler {
            keys: KeyTable::default(),
            rule_sets: vec![RuleSet::default()],
            cors_index: CorsIndex::builder(),
            needs_clock: false,
            warnings: Vec::new(),
        }
    }
}

impl parse::KeySink for Compiler {
    /// Validates and adds the next key of the `keys` list.
    fn add_key(&mut self, rk: RawKey) -> Result<(), ConfigError> {
        let at = format!("keys[{}]", self.keys.len());
        check_id(&rk.id).map_err(|r| ConfigError::new(format!("{at}.id"), r))?;
        let (digest, field) = key_digest(&rk, &at, &mut self.warnings)?;
        let entry = Entry::compile(rk, &at)?;
        self.needs_clock |= entry.key.window.is_bounded();
        let key = match entry.own_rules {
            Some(rules) => {
                self.rule_sets.push(*rules);
                Key { endpoints: Endpoints::Rules((self.rule_sets.len() - 1) as u32), ..entry.key }
            }
            None => entry.key,
        };
        if let (Some(origins), false) = (&key.origins, key.disabled) {
            let rules = match key.endpoints {
                Endpoints::All => None,
                Endpoints::Rules(n) => Some(n),
                Endpoints::Own => None,
            };
            self.cors_index.add(origins, Grant { window: key.window, rules });
        }
        if let Err(first) = self.keys.insert(digest, key) {
            let what = if field == "key" { "same key as" } else { "same digest as" };
            return Err(ConfigError::new(format!("{at}.{field}"), format!("{what} keys[{first}]")));
        }
        Ok(())
    }
}

impl Compiler {
    /// Checks what needs every key at once, compiles the rest, and builds the policy.
    pub fn finish(mut self, rest: RawRest) -> Result<Compiled, ConfigError> {
        if let Some((first, again)) = self.keys.first_duplicate_id() {
            return Err(ConfigError::new(
                format!("keys[{again}].id"),
                format!("duplicate id, already used by keys[{first}]"),
            ));
        }
        self.rule_sets[CORS_ENDPOINTS as usize] =
            rule_set("cors_endpoints", rest.cors_endpoints.as_deref().unwrap_or(&[]))?;
        Ok(Compiled {
            policy: Policy {
                public: rule_set("public_endpoints", &rest.public_endpoints)?,
                cors: cors_headers(&rest.cors)?,
                forward: forward(&rest.forward)?,
                keys: self.keys.with_lookup_cache(),
                rule_sets: self.rule_sets,
                cors_index: self.cors_index.build(),
                mode: rest.mode,
                key_format: match rest.key_format {
                    RawKeyFormat::Any => KeyFormat::Any,
                    RawKeyFormat::Checksummed => KeyFormat::Checksummed,
                    RawKeyFormat::ChecksummedOnly => KeyFormat::ChecksummedOnly,
                },
                // Cached remote keys can carry validity windows of their own.
                needs_clock: self.needs_clock || rest.key_service.is_some(),
                remote: rest.key_service.as_ref().map(key_service).transpose()?,
                usage: usage(rest.usage.as_ref(), rest.key_service.is_some())?,
            },
            warnings: self.warnings,
        })
    }
}

/// The digest to index the key by, and the field it came from (`sha256` or `key`).
fn key_digest(
    rk: &RawKey,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<(Digest, &'static str), ConfigError> {
    match (&rk.sha256, &rk.key) {
        (Some(hex), None) => hex::digest(hex)
            .map(|d| (d, "sha256"))
            .ok_or_else(|| ConfigError::new(format!("{at}.sha256"), "expected 64 hex characters")),
        (None, Some(plain)) => {
            // The message says what is wrong with the key, never what the key is.
            if token::bearer_key(format!("Bearer {plain}").as_bytes()).is_none() {
                return Err(ConfigError::new(
                    format!("{at}.key"),
                    "not a valid bearer token: 1-1024 characters of A-Z a-z 0-9 - . _ ~ + / then optional =",
                ));
            }
            warnings.push(format!(
                "{at}.key: plaintext key in the configuration; use sha256 outside local development"
            ));
            Ok((sha256(plain.as_bytes()), "key"))
        }
        (Some(_), Some(_)) => Err(ConfigError::new(at, "sha256 and key are mutually exclusive")),
        (None, None) => {
            Err(ConfigError::new(at, "expected sha256 (or key, for local development only)"))
        }
    }
}

fn cors_headers(raw: &RawCors) -> Result<CorsHeaders, ConfigError> {
    for (field, list) in
        [("allow_headers", &raw.allow_headers), ("expose_headers", &raw.expose_headers)]
    {
        for (j, name) in list.iter().enumerate() {
            check_header_name(name)
                .map_err(|r| ConfigError::new(format!("cors.{field}[{j}]"), r))?;
        }
    }
    Ok(CorsHeaders {
        allow_headers: raw.allow_headers.join(", ").into(),
        expose_headers: (!raw.expose_headers.is_empty())
            .then(|| raw.expose_headers.join(", ").into()),
        max_age: raw.max_age_seconds.to_string().into(),
        allow_credentials: raw.allow_credentials,
    })
}

fn forward(raw: &RawForward) -> Result<Forward, ConfigError> {
    let named = [
        ("key_id_header", &raw.key_id_header),
        ("owner_header", &raw.owner_header),
        ("limits_header", &raw.limits_header),
    ];
    for (i, (field, name)) in named.iter().enumerate() {
        check_forward_header(name).map_err(|r| ConfigError::new(format!("forward.{field}"), r))?;
        if let Some((other, _)) = named[..i].iter().find(|(_, n)| n == name) {
            return Err(ConfigError::new(
                format!("forward.{field}"),
                format!("must differ from {other}"),
            ));
        }
    }
    Ok(Forward {
        key_id_header: raw.key_id_header.as_str().into(),
        owner_header: raw.owner_header.as_str().into(),
        limits_header: raw.limits_header.as_str().into(),
        strip_authorization: raw.strip_authorization,
        filter_state: raw.filter_state,
    })
}

/// `usage`, which sends its batches to the key service's cluster, so needs `key_service`.
fn usage(raw: Option<&RawUsage>, key_service: bool) -> Result<Option<UsageSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if !key_service {
        return Err(ConfigError::new(
            "usage",
            "needs key_service: the counts are sent to the key service's cluster",
        ));
    }
    if !(1_000..=600_000).contains(&raw.flush_ms) {
        return Err(ConfigError::new("usage.flush_ms", "expected 1000 to 600000"));
    }
    if !(1..=1_000_000).contains(&raw.max_keys) {
        return Err(ConfigError::new("usage.max_keys", "expected 1 to 1000000"));
    }
    Ok(Some(UsageSettings {
        flush_ms: u64::from(raw.flush_ms),
        max_keys: raw.max_keys as usize,
        upstream_status: raw.upstream_status,
    }))
}

fn key_service(raw: &RawKeyService) -> Result<KeyService, ConfigError> {
    let at = |field: &str| format!("key_service.{field}");
    let name_ok = |s: &str| {
        (1..=255).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_graphic() && c != b'/')
    };
    if !name_ok(&raw.cluster) {
        return Err(ConfigError::new(at("cluster"), "expected an Envoy cluster name"));
    }
    let authority = raw.authority.as_deref().unwrap_or(&raw.cluster);
    if !name_ok(authority) {
        return Err(ConfigError::new(at("authority"), "expected a host[:port]"));
    }
    let prefix = raw.path_prefix.as_bytes();
    let prefix_ok = prefix.first() == Some(&b'/')
        && prefix.last() != Some(&b'/')
        && prefix.split(|&c| c == b'/').skip(1).all(path::is_safe_segment);
    if !prefix_ok {
        return Err(ConfigError::new(
            at("path_prefix"),
            "expected a path such as /v1/filter: starts with /, no trailing /, no . or .. segments",
        ));
    }
    let within = |field: &str, value: u32, low: u32, high: u32| {
        if (low..=high).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::new(at(field), format!("expected {low} to {high}")))
        }
    };
    let c = &raw.cache;
    let seconds = |field: &str, value: u32, low: u32, high: u32| {
        within(&format!("cache.{field}"), value, low, high).map(|s| i64::from(s) * 1000)
    };
    let max_entries = within("cache.max_entries", c.max_entries, 1, 10_000_000)?;
    Ok(KeyService {
        cluster: raw.cluster.as_str().into(),
        authority: authority.into(),
        path_prefix: raw.path_prefix.as_str().into(),
        timeout_ms: within("timeout_ms", raw.timeout_ms, 1, 60_000)?,
        changes_poll_ms: within("changes_poll_ms", raw.changes_poll_ms, 100, 600_000)?,
        changes_wait_ms: within("changes_wait_ms", raw.changes_wait_ms, 0, 30_000)?,
        max_pending: within("max_pending", raw.max_pending, 1, 65_536)?,
        cache: CacheSettings {
            max_entries,
            max_negative: max_entries.clamp(1024, 16_384),
            ttl_ms: seconds("ttl_seconds", c.ttl_seconds, 1, 86_400)?,
            negative_ttl_ms: seconds("negative_ttl_seconds", c.negative_ttl_seconds, 1, 3_600)?,
            stale_if_error_ms: seconds(
                "stale_if_error_seconds",
                c.stale_if_error_seconds,
                0,
                86_400,
            )?,
        },
    })
}

fn check_header_name(name: &str) -> Result<(), &'static str> {
    if token::is_http_token(name.as_bytes()) {
        Ok(())
    } else {
        Err("expected an HTTP header name")
    }
}

/// Identity headers must be names Envoy stores as written (lower case) and must not
/// collide with headers that carry the request itself.
fn check_forward_header(name: &str) -> Result<(), &'static str> {
    check_header_name(name)?;
    if name.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err("expected a lower-case header name");
    }
    const RESERVED: [&str; 9] = [
        "authorization",
        "host",
        "origin",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "te",
        "x-keygate-would-deny",
    ];
    if RESERVED.contains(&name) {
        return Err("this header carries the request itself and cannot hold the identity");
    }
    Ok(())
}
