//! The plugin configuration exactly as the operator writes it (JSON), and its errors.
//!
//! These types only describe the schema; `compile` turns them into the [`Policy`] the
//! filter serves from. Unknown fields are errors everywhere, so a typo never silently
//! weakens a policy.
//!
//! [`Policy`]: crate::policy::Policy

use crate::compile::Compiler;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// Everything in the configuration but `keys`, which are compiled one by one as they
/// are read (see [`parse`]) so that a large table never exists twice in memory.
#[derive(Debug, Default)]
pub struct RawRest {
    pub forward: RawForward,
    pub cors_endpoints: Option<Vec<RawRule>>,
    pub public_endpoints: Vec<RawRule>,
    pub cors: RawCors,
    pub mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub sha256: Option<String>,
    /// Plaintext key, for local development only.
    pub key: Option<String>,
    pub owner: Option<String>,
    pub expires_at: Option<String>,
    pub not_before: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    pub cors: Option<RawKeyCors>,
    pub rules: Option<Vec<RawRule>>,
    pub resources: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyCors {
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub full_access: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub methods: Vec<String>,
    pub paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForward {
    pub key_id_header: String,
    pub owner_header: String,
    pub strip_authorization: bool,
    /// Also expose the identity as filter state (`wasm.keygate.key_id`, `wasm.keygate.owner`)
    /// for access logs. Costs one or two host calls per allowed request.
    pub filter_state: bool,
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward {
            key_id_header: "x-api-key-id".into(),
            owner_header: "x-api-key-owner".into(),
            strip_authorization: false,
            filter_state: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCors {
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: u32,
    pub allow_credentials: bool,
}

impl Default for RawCors {
    fn default() -> Self {
        RawCors {
            allow_headers: vec!["authorization".into(), "content-type".into()],
            expose_headers: Vec::new(),
            max_age_seconds: 600,
            allow_credentials: false,
        }
    }
}

/// `enforce` refuses what fails; `report` lets everything through and says what it
/// would have refused, for rolling out a new policy safely.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

/// A configuration that cannot be served: where (a JSON path such as `keys[3].sha256`)
/// and why. Never holds a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { path: path.into(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Reads the JSON, handing each key to `compiler` as soon as it is parsed, and returns the
/// rest. Errors carry the JSON path where serde stopped, or the compiler's own error.
pub fn parse(json: &[u8], compiler: &mut Compiler) -> Result<RawRest, ConfigError> {
    // serde would also read a struct written as a JSON array; the operator writes an object.
    match json.iter().find(|c| !c.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(ConfigError::new("config", "expected a JSON object")),
        None => {
            return Err(ConfigError::new("config", "empty configuration: expected a JSON object"))
        }
    }
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let seed = ConfigSeed { compiler, failure: &mut failure };
    let result = seed.deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track));
    let rest = match (result, failure) {
        (Ok(rest), _) => rest,
        (Err(_), Some(compile_error)) => return Err(compile_error),
        (Err(e), None) => {
            // serde_path_to_error says `.` for the root, `?` where the JSON did not parse, and
            // nothing at all for a root field named "".
            let path = match track.path().to_string() {
                p if p.is_empty() || p == "." || p == "?" => "config".to_string(),
                p => p,
            };
            return Err(ConfigError::new(path, without_values(&e.to_string())));
        }
    };
    de.end().map_err(|e| ConfigError::new("config", e.to_string()))?;
    Ok(rest)
}

/// serde quotes the offending value in some messages (`invalid type: string "kg_..."`), and
/// that value may be a key pasted in the wrong place: only its kind is kept.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            let expected = rest.rfind(", expected").map_or("", |i| &rest[i..]);
            return format!("{prefix}{kind}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let expected = rest.rfind("`, expected").map_or("", |i| &rest[i + 1..]);
        return format!("unknown variant{expected}");
    }
    message.to_string()
}

#[derive(Clone, Copy, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Keys,
    Forward,
    CorsEndpoints,
    PublicEndpoints,
    Cors,
    Mode,
}

impl Field {
    const fn name(self) -> &'static str {
        match self {
            Field::Keys => "keys",
            Field::Forward => "forward",
            Field::CorsEndpoints => "cors_endpoints",
            Field::PublicEndpoints => "public_endpoints",
            Field::Cors => "cors",
            Field::Mode => "mode",
        }
    }
}

/// The top-level object, read by hand so `keys` can stream into the compiler.
struct ConfigSeed<'c> {
    compiler: &'c mut Compiler,
    failure: &'c mut Option<ConfigError>,
}

impl<'de> DeserializeSeed<'de> for ConfigSeed<'_> {
    type Value = RawRest;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawRest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ConfigSeed<'_> {
    type Value = RawRest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a keygate configuration object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRest, A::Error> {
        let mut rest = RawRest::default();
        let mut seen = [false; 6];
        while let Some(field) = map.next_key::<Field>()? {
            if std::mem::replace(&mut seen[field as usize], true) {
                return Err(de::Error::duplicate_field(field.name()));
            }
            match field {
                Field::Keys => map.next_value_seed(KeysSeed {
                    compiler: &mut *self.compiler,
                    failure: &mut *self.failure,
                })?,
                Field::Forward => rest.forward = map.next_value()?,
                Field::CorsEndpoints => rest.cors_endpoints = map.next_value()?,
                Field::PublicEndpoints => rest.public_endpoints = map.next_value()?,
                Field::Cors => rest.cors = map.next_value()?,
                Field::Mode => rest.mode = map.next_value()?,
            }
        }
        if !seen[Field::Keys as usize] {
            return Err(de::Error::missing_field("keys"));
        }
        Ok(rest)
    }
}

/// The `keys` list: each entry goes to the compiler and is dropped before the next is read.
struct KeysSeed<'c> {
    compiler: &'c mut Compiler,
    failure: &'c mut Option<ConfigError>,
}

impl<'de> DeserializeSeed<'de> for KeysSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of keys")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(key) = seq.next_element::<RawKey>()? {
            if let Err(e) = self.compiler.add_key(key) {
                // The compiler's error already names its path; serde's would only repeat it.
                *self.failure = Some(e);
                return Err(de::Error::custom("invalid key"));
            }
        }
        Ok(())
    }
}
