//! Reading a plugin configuration: the top-level object by hand, so that each entry of
//! `keys` goes to the compiler as soon as it is parsed and a large table never exists twice
//! in memory. Errors carry the JSON path where serde stopped, or the compiler's own error.

use crate::core::config::{ConfigError, RawKey, RawOwner, RawRest};
use crate::core::entry::{check_id, Entry};
use crate::core::limits::{self, Limit};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// Where [`parse`] hands each entry of `keys` as soon as it is read: the compiler.
pub trait KeySink {
    fn add_key(&mut self, key: RawKey) -> Result<(), ConfigError>;
}

/// Reads the JSON, handing each key to `compiler` as soon as it is parsed, and returns the
/// rest. Errors carry the JSON path where serde stopped, or the compiler's own error.
pub fn parse(json: &[u8], compiler: &mut dyn KeySink) -> Result<RawRest, ConfigError> {
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
            let message = e.to_string();
            let path = match scrub_path(track.path().to_string(), &message) {
                p if p.is_empty() || p == "." || p == "?" => "config".to_string(),
                p => p,
            };
            return Err(ConfigError::new(path, without_values(&message)));
        }
    };
    de.end().map_err(|e| ConfigError::new("config", e.to_string()))?;
    Ok(rest)
}

/// serde quotes the offending value in some messages (`invalid type: string "kg_..."`), and
/// that value may be a key pasted in the wrong place: only its kind is kept.
pub(crate) fn without_values(message: &str) -> String {
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
    if let Some((name, expected)) = unknown_field(message) {
        return if looks_like_a_field(name) {
            message.to_string()
        } else {
            format!("unknown field{expected}")
        };
    }
    message.to_string()
}

/// The name and the rest of serde's "unknown field `name`, expected ..." message.
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    // The name may hold backticks itself; the expected list never holds "`, expected".
    let end = rest.rfind("`, expected").or_else(|| rest.rfind('`'))?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// A field name is echoed (in the message and the path) when it looks like a typo of one:
/// short and lower case. A key pasted as a name (found by the `entry` fuzz target) is not.
pub fn looks_like_a_field(name: &str) -> bool {
    name.len() <= 32
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !name.contains("kg_")
}

/// serde_path_to_error's path, without its last segment when that is an unknown field
/// name that must not be echoed.
pub(crate) fn scrub_path(path: String, message: &str) -> String {
    match unknown_field(message) {
        Some((name, _)) if !looks_like_a_field(name) => match path.strip_suffix(name) {
            Some(parent) => parent.strip_suffix('.').unwrap_or(parent).to_string(),
            None => path,
        },
        _ => path,
    }
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
    KeyFormat,
    KeyService,
    Usage,
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
            Field::KeyFormat => "key_format",
            Field::KeyService => "key_service",
            Field::Usage => "usage",
        }
    }
}

/// The top-level object, read by hand so `keys` can stream into the compiler.
struct ConfigSeed<'c> {
    compiler: &'c mut dyn KeySink,
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
        let mut seen = [false; 9];
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
                Field::KeyFormat => rest.key_format = map.next_value()?,
                Field::KeyService => rest.key_service = Some(map.next_value()?),
                Field::Usage => rest.usage = Some(map.next_value()?),
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
    compiler: &'c mut dyn KeySink,
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

/// One key entry on its own, without `sha256`/`key`: what the key service stores and
/// answers. Errors are named below `at` (`"key"` in a key-service answer, `""` for an
/// entry sent to the admin API), with the same reasons as in a plugin configuration.
pub fn entry(json: &[u8], at: &str) -> Result<Entry, ConfigError> {
    stored_entry(read::<RawKey>(json, at, "entry")?, at)
}

/// An owner's limits as the key service takes them (`{"limits": [...]}`), compiled; errors
/// are named like an entry's (`limits[0].per`).
pub fn owner_limits(json: &[u8]) -> Result<Vec<Limit>, ConfigError> {
    let raw = read::<RawOwner>(json, "", "owner")?;
    limits::compile(&raw.limits, "limits")
}

/// One JSON document as `T`, errors named below `at` (`whole` names the document itself).
fn read<T: de::DeserializeOwned>(json: &[u8], at: &str, whole: &str) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let raw = T::deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track)).map_err(
        |e| {
            let message = e.to_string();
            let path = match scrub_path(track.path().to_string(), &message) {
                p if p.is_empty() || p == "." || p == "?" => String::new(),
                p => p,
            };
            let path = match (at.is_empty(), path.is_empty()) {
                (_, true) if at.is_empty() => whole.to_string(),
                (_, true) => at.to_string(),
                (true, false) => path,
                (false, false) => format!("{at}.{path}"),
            };
            ConfigError::new(path, without_values(&message))
        },
    )?;
    de.end()
        .map_err(|e| ConfigError::new(if at.is_empty() { whole } else { at }, e.to_string()))?;
    Ok(raw)
}

/// Compiles an entry already read, refusing the digest fields a stored entry never has.
pub fn stored_entry(raw: RawKey, at: &str) -> Result<Entry, ConfigError> {
    let field = |name: &str| if at.is_empty() { name.to_string() } else { format!("{at}.{name}") };
    for (name, present) in [("sha256", raw.sha256.is_some()), ("key", raw.key.is_some())] {
        if present {
            return Err(ConfigError::new(
                field(name),
                "not part of a stored entry: the key service keeps the digest itself",
            ));
        }
    }
    check_id(&raw.id).map_err(|r| ConfigError::new(field("id"), r))?;
    Entry::compile(raw, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str, at: &str) -> String {
        match entry(json.as_bytes(), at) {
            Ok(e) => unreachable!("accepted: {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_entry_compiles_on_its_own_with_its_own_rules() {
        let json = r#"{"id": "web", "owner": "acme", "cors": {"allowed_origins": ["https://A.example"]},
            "rules": [{"methods": ["GET"], "paths": ["/v1/{id}"]}], "resources": ["x"]}"#;
        let e = match entry(json.as_bytes(), "key") {
            Ok(e) => e,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(&*e.key.id, "web");
        assert_eq!(e.key.endpoints, crate::core::keytable::Endpoints::Own);
        assert!(e.own_rules.is_some_and(|r| r.allows(b"GET", b"/v1/x")));
    }

    #[test]
    fn entry_errors_name_the_path_below_the_prefix() {
        assert_eq!(
            refused(r#"{"id": "a", "sha256": "00"}"#, "key"),
            "key.sha256: not part of a stored entry: the key service keeps the digest itself"
        );
        assert_eq!(
            refused(r#"{"id": "a b"}"#, ""),
            "id: expected 1-64 characters of A-Z a-z 0-9 . _ -"
        );
        assert_eq!(
            refused(r#"{"id": "a", "cors": {"allowed_origins": ["ftp://x"]}}"#, ""),
            "cors.allowed_origins[0]: expected an origin scheme://host[:port] with scheme http or https, and no path"
        );
        assert_eq!(
            refused(r#"{"id": "a", "colour": 1}"#, "key").split(':').next(),
            Some("key.colour")
        );
        let typo = refused(r#"{"id": "a", "disabled": "kg_secret"}"#, "");
        assert!(typo.starts_with("disabled: invalid type: string, expected a boolean"), "{typo}");
        assert_eq!(refused(r#"{"id": "a"} x"#, "key").split(':').next(), Some("key"));
        assert_eq!(refused(r#"[]"#, "").split(':').next(), Some("entry"));
        let typo = refused(r#"{"id": "a", "ownr": "x"}"#, "");
        assert!(typo.starts_with("ownr: unknown field `ownr`, expected one of"), "{typo}");
        for pasted in [
            r#"{"id": "a", "kg_ethodsabled": 1}"#,
            r#"{"id": "a", "kg_Zx9Qp-3LrT8vW2nB5mK7cY1dF4gH6jS0aE": 1}"#,
        ] {
            let e = refused(pasted, "");
            assert!(e.contains(": unknown field, expected one of") && !e.contains("kg_"), "{e}");
        }
    }
}
