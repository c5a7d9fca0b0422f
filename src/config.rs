//! The plugin configuration exactly as the operator writes it (JSON), and its errors.
//!
//! These types only describe the schema; `compile` turns them into the [`Policy`] the
//! filter serves from. Unknown fields are errors everywhere, so a typo never silently
//! weakens a policy.
//!
//! [`Policy`]: crate::policy::Policy

use serde::Deserialize;
use std::fmt;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub forward: RawForward,
    pub cors_endpoints: Option<Vec<RawRule>>,
    #[serde(default)]
    pub public_endpoints: Vec<RawRule>,
    #[serde(default)]
    pub cors: RawCors,
    #[serde(default)]
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
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward {
            key_id_header: "x-api-key-id".into(),
            owner_header: "x-api-key-owner".into(),
            strip_authorization: false,
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
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Reads the JSON into the schema; errors carry the JSON path where serde stopped.
pub fn parse(json: &[u8]) -> Result<RawConfig, ConfigError> {
    // serde would also read a struct written as a JSON array; the operator writes an object.
    match json.iter().find(|c| !c.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(ConfigError::new("config", "expected a JSON object")),
        None => {
            return Err(ConfigError::new(
                "config",
                "empty configuration: expected a JSON object",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // serde_path_to_error says `.` for the root, `?` where the JSON did not parse, and
        // nothing at all for a root field named "".
        let path = match e.path().to_string() {
            p if p.is_empty() || p == "." || p == "?" => "config".to_string(),
            p => p,
        };
        ConfigError::new(path, e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| ConfigError::new("config", e.to_string()))?;
    Ok(raw)
}
