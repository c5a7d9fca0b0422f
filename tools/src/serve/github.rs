//! GitHub secret scanning partner reports, without the database: GitHub's public keys, the
//! signature check, the report body and the answer's labels (the handler is `leaks::github`).
//!
//! GitHub signs the raw body with ECDSA P-256 / SHA-256 and names the key in
//! `Github-Public-Key-Identifier`; the signature (ASN.1 DER, base64) is in
//! `Github-Public-Key-Signature`. Its keys are read from a file in the shape GitHub publishes
//! them (`{"public_keys": [{"key_identifier", "key", "is_current"}]}`), every key kept, current
//! or not, since GitHub may still sign with a key it is retiring.
//!
//! A valid signature says the body came from GitHub, not that it is new: a body can be sent
//! again. Acting on a report is idempotent (a key already disabled stays so), so a replay
//! changes nothing.

use base64::Engine as _;
use keygate::core::hex;
use keygate::core::keytable::sha256;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// The most reports one call may carry.
pub const MAX_REPORTS: usize = 1_000;
/// The longest string a report may hold.
pub const MAX_FIELD: usize = 4_096;

/// GitHub's secret scanning public keys, by identifier. `is_current` is not read: a key
/// GitHub is rotating out stays listed while reports signed with it may still arrive, so every
/// listed key verifies until the file no longer lists it.
pub struct PublicKeys {
    keys: Vec<(String, VerifyingKey)>,
}

/// Why a report's signature was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NoIdentifier,
    UnknownIdentifier,
    NoSignature,
    MalformedSignature,
    BadSignature,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::NoIdentifier => "no Github-Public-Key-Identifier header",
            Refused::UnknownIdentifier => {
                "Github-Public-Key-Identifier names no key of the --github-keys file"
            }
            Refused::NoSignature => "no Github-Public-Key-Signature header",
            Refused::MalformedSignature => {
                "Github-Public-Key-Signature is not a base64 DER ECDSA signature"
            }
            Refused::BadSignature => "the signature does not match the body",
        })
    }
}

impl PublicKeys {
    pub fn load(path: &Path) -> Result<PublicKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PublicKeys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// GitHub's JSON; a refusal names the JSON path.
    pub fn parse(json: &str) -> Result<PublicKeys, String> {
        let doc: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let list = doc
            .get("public_keys")
            .and_then(Value::as_array)
            .ok_or("public_keys: expected a list of GitHub's keys")?;
        if list.is_empty() {
            return Err("public_keys: empty; expected at least one key".into());
        }
        let mut keys: Vec<(String, VerifyingKey)> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let at = format!("public_keys[{i}]");
            let id = item
                .get("key_identifier")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or(format!("{at}.key_identifier: expected a non-empty string"))?;
            if keys.iter().any(|(known, _)| known == id) {
                return Err(format!("{at}.key_identifier: listed twice"));
            }
            let pem = item
                .get("key")
                .and_then(Value::as_str)
                .ok_or(format!("{at}.key: expected a PEM public key"))?;
            let key = VerifyingKey::from_public_key_pem(pem)
                .map_err(|_| format!("{at}.key: not a P-256 public key"))?;
            keys.push((id.to_string(), key));
        }
        Ok(PublicKeys { keys })
    }

    /// Checks the headers' signature of the raw `body` (the bytes as received: GitHub signed
    /// those, not a re-encoding). A replayed body with its signature verifies again; the
    /// handler's action is idempotent, so a replay changes nothing new.
    pub fn verify(
        &self,
        identifier: Option<&[u8]>,
        signature: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(), Refused> {
        let identifier = identifier.ok_or(Refused::NoIdentifier)?;
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id.as_bytes() == identifier)
            .map(|(_, key)| key)
            .ok_or(Refused::UnknownIdentifier)?;
        let signature = signature.ok_or(Refused::NoSignature)?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| Refused::MalformedSignature)?;
        let signature = Signature::from_der(&der).map_err(|_| Refused::MalformedSignature)?;
        key.verify(body, &signature).map_err(|_| Refused::BadSignature)
    }
}

/// One token GitHub found.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub token: String,
    /// GitHub's `type`: the name the token format was registered under.
    pub kind: String,
    pub url: String,
    /// Where on GitHub: `content`, `commit`, `pull_request_description`, ...
    pub source: String,
}

/// GitHub's JSON array; fields other than these four are ignored. A refusal names the index
/// and the field, never a token.
pub fn parse_reports(body: &[u8]) -> Result<Vec<Report>, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| "expected a JSON array of reports".to_string())?;
    let list = doc.as_array().ok_or("expected a JSON array of reports")?;
    if list.len() > MAX_REPORTS {
        return Err(format!("{} reports: at most {MAX_REPORTS} a call", list.len()));
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str, required: bool| -> Result<String, String> {
                match item.get(name) {
                    Some(Value::String(s))
                        if s.len() <= MAX_FIELD && !(required && s.is_empty()) =>
                    {
                        Ok(s.clone())
                    }
                    None | Some(Value::Null) if !required => Ok(String::new()),
                    _ => Err(format!(
                        "[{i}].{name}: expected a {}string of at most {MAX_FIELD} bytes",
                        if required { "non-empty " } else { "" }
                    )),
                }
            };
            if !item.is_object() {
                return Err(format!("[{i}]: expected an object"));
            }
            Ok(Report {
                token: field("token", true)?,
                kind: field("type", false)?,
                url: field("url", false)?,
                source: field("source", false)?,
            })
        })
        .collect()
}

/// The answer for one report: `true_positive` for a key held here.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Label {
    pub token_hash: String,
    pub token_type: String,
    pub label: &'static str,
}

pub fn label(report: &Report, known: bool) -> Label {
    Label {
        token_hash: hex::encode(&sha256(report.token.as_bytes())),
        token_type: report.kind.clone(),
        label: if known { "true_positive" } else { "false_positive" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};

    fn signer(seed: u8) -> SigningKey {
        match SigningKey::from_bytes(&[seed; 32].into()) {
            Ok(key) => key,
            Err(e) => unreachable!("{e}"),
        }
    }

    fn keys_json(pairs: &[(&str, &SigningKey)]) -> String {
        let list: Vec<Value> = pairs
            .iter()
            .map(|(id, key)| {
                let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap_or_default();
                serde_json::json!({"key_identifier": id, "key": pem, "is_current": true})
            })
            .collect();
        serde_json::json!({ "public_keys": list }).to_string()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn a_body_signed_by_a_listed_key_verifies_and_nothing_else_does() {
        let (github, other) = (signer(7), signer(9));
        let keys = match PublicKeys::parse(&keys_json(&[("old", &other), ("current", &github)])) {
            Ok(k) => k,
            Err(e) => unreachable!("{e}"),
        };
        let body = br#"[{"token":"kg_x","type":"keygate_api_key","url":"u","source":"content"}]"#;
        let good = sign(&github, body);
        let verify = |id: Option<&str>, sig: Option<&str>, body: &[u8]| {
            keys.verify(id.map(str::as_bytes), sig.map(str::as_bytes), body)
        };
        assert_eq!(verify(Some("current"), Some(&good), body), Ok(()));
        // The same body again verifies too: replays are harmless by idempotence, not refused.
        assert_eq!(verify(Some("current"), Some(&good), body), Ok(()));
        let mut changed = body.to_vec();
        changed[10] ^= 1;
        assert_eq!(verify(Some("current"), Some(&good), &changed), Err(Refused::BadSignature));
        assert_eq!(verify(Some("old"), Some(&good), body), Err(Refused::BadSignature));
        assert_eq!(verify(Some("nope"), Some(&good), body), Err(Refused::UnknownIdentifier));
        assert_eq!(verify(None, Some(&good), body), Err(Refused::NoIdentifier));
        assert_eq!(verify(Some("current"), None, body), Err(Refused::NoSignature));
        assert_eq!(verify(Some("current"), Some("%%%"), body), Err(Refused::MalformedSignature));
        assert_eq!(verify(Some("current"), Some("AAAA"), body), Err(Refused::MalformedSignature));
        assert_eq!(verify(Some("old"), Some(&sign(&other, body)), body), Ok(()));
    }

    #[test]
    fn a_keys_file_is_refused_with_the_path_of_what_is_wrong() {
        let key = signer(3);
        let one = keys_json(&[("a", &key)]);
        assert!(PublicKeys::parse(&one).is_ok());
        let refused = |json: &str| PublicKeys::parse(json).err().unwrap_or_default();
        assert_eq!(
            refused(r#"{"public_keys": []}"#),
            "public_keys: empty; expected at least one key"
        );
        assert_eq!(refused("{}"), "public_keys: expected a list of GitHub's keys");
        assert_eq!(
            refused(&keys_json(&[("a", &key), ("a", &key)])),
            "public_keys[1].key_identifier: listed twice"
        );
        assert_eq!(
            refused(
                r#"{"public_keys": [{"key_identifier": "a", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}]}"#
            ),
            "public_keys[0].key: not a P-256 public key"
        );
        assert_eq!(
            refused(r#"{"public_keys": [{"key": "x"}]}"#),
            "public_keys[0].key_identifier: expected a non-empty string"
        );
        assert_eq!(
            refused(r#"{"public_keys": [{"key_identifier": "", "key": "x"}]}"#),
            "public_keys[0].key_identifier: expected a non-empty string"
        );
        // A well-formed EC key on another curve (P-384, made by Python's `cryptography`).
        let p384 = serde_json::json!({"public_keys": [{"key_identifier": "a", "key": P384_PEM}]});
        assert_eq!(refused(&p384.to_string()), "public_keys[0].key: not a P-256 public key");
    }

    #[test]
    fn reports_are_read_bounded_and_refusals_never_show_a_token() {
        let body =
            br#"[{"token":"kg_secret_1","type":"t","url":"https://x","source":"commit","extra":1},
                        {"token":"kg_secret_2"}]"#;
        let reports = parse_reports(body).unwrap_or_default();
        assert_eq!(reports.len(), 2);
        assert_eq!(
            reports[0],
            Report {
                token: "kg_secret_1".into(),
                kind: "t".into(),
                url: "https://x".into(),
                source: "commit".into()
            }
        );
        assert_eq!(reports[1].kind, "");
        for (bad, why) in [
            (r#"{"token":"kg_secret_3"}"#.to_string(), "expected a JSON array of reports"),
            (
                r#"[{"token":""}]"#.into(),
                "[0].token: expected a non-empty string of at most 4096 bytes",
            ),
            (
                r#"[{"token":"kg_secret_4","type":5}]"#.into(),
                "[0].type: expected a string of at most 4096 bytes",
            ),
            (
                r#"[{"type":"kg_secret_5"}]"#.into(),
                "[0].token: expected a non-empty string of at most 4096 bytes",
            ),
            (r#"["kg_secret_6"]"#.into(), "[0]: expected an object"),
            (
                format!(r#"[{{"token":"{}"}}]"#, "k".repeat(4097)),
                "[0].token: expected a non-empty string of at most 4096 bytes",
            ),
            (
                format!("[{}]", vec![r#"{"token":"t"}"#; 1001].join(",")),
                "1001 reports: at most 1000 a call",
            ),
        ] {
            assert_eq!(parse_reports(bad.as_bytes()), Err(why.to_string()));
        }
        let label = label(&reports[0], true);
        assert_eq!(
            serde_json::to_string(&label).unwrap_or_default(),
            format!(
                r#"{{"token_hash":"{}","token_type":"t","label":"true_positive"}}"#,
                hex::encode(&sha256(b"kg_secret_1"))
            )
        );
    }

    // GitHub's own signed sample request from the partner program's documentation, with the
    // two keys GitHub published then (the first no longer current): a body GitHub really
    // signed verifies here, and the answer's hash is the one other partners compute for it.
    const GITHUB_KEYS: &str = r#"{"public_keys": [
        {"key_identifier": "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
         "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n",
         "is_current": false},
        {"key_identifier": "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
         "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n",
         "is_current": true}
    ]}"#;
    const GITHUB_ID: &str = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c";
    const GITHUB_SIGNATURE: &str =
        "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==";
    const GITHUB_BODY: &str = r#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#;

    #[test]
    fn the_signed_sample_in_githubs_documentation_verifies() {
        let keys = match PublicKeys::parse(GITHUB_KEYS) {
            Ok(k) => k,
            Err(e) => unreachable!("{e}"),
        };
        let verify = |id: &str, body: &str| {
            keys.verify(Some(id.as_bytes()), Some(GITHUB_SIGNATURE.as_bytes()), body.as_bytes())
        };
        assert_eq!(verify(GITHUB_ID, GITHUB_BODY), Ok(()));
        // Parsed and written again, the body differs in bytes: only the raw body verifies.
        let respaced = GITHUB_BODY.replace(',', ", ");
        assert_eq!(verify(GITHUB_ID, &respaced), Err(Refused::BadSignature));
        let old = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
        assert_eq!(verify(old, GITHUB_BODY), Err(Refused::BadSignature));
        let reports = parse_reports(GITHUB_BODY.as_bytes()).unwrap_or_default();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].source, "commit");
        assert_eq!(
            serde_json::to_value(label(&reports[0], false)).unwrap_or_default(),
            serde_json::json!({
                "token_hash": "9a45520a1213f15016d2d768b5fb3d904492a44ee274b44d4de8803e00fb536a",
                "token_type": "some_type",
                "label": "false_positive"
            })
        );
    }

    // Made once by tests/integration/support/github_signing.py (GithubSigner("py")), so the
    // Python signer the integration tests use and this verifier are held to one scheme. Its
    // S is in the upper half of the order, which GitHub's signer may produce too: such a
    // signature must verify (no low-S rule here).
    const PYTHON_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAZyl4o+YQtjyFTI4JqhcbIo3itxa\nCe74f3sNRt8wPuWbvubGYnH46JwUByaMjyocXw7+5APFRvETXuzPmC+1Eg==\n-----END PUBLIC KEY-----\n";
    const PYTHON_BODY: &str =
        r#"[{"token":"kg_from_python","type":"keygate_api_key","url":"","source":"content"}]"#;
    const PYTHON_SIGNATURE: &str =
        "MEYCIQDA0/A0CuzZqDJbnzopTsBBJFHeTgjy6BJQ1RB/TODTnAIhAOwZUwPHygb5jXfO/j9RToNV988esFBa0HFrCM7cD/em";
    const P384_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAElp3FRocmmQ2t6xU8lFDabrIzQouaJG4t\n4xJWxFHazjysAuNUBkYgYZ3w9nF/xMIzyqYxDjV/D/NA/mP+LpsoWQA2iIujpI0s\nL/KbHlVd2N3BO7F/6dThyvH8gisMF3O7\n-----END PUBLIC KEY-----\n";

    #[test]
    fn a_body_signed_by_the_python_test_signer_verifies() {
        let json = serde_json::json!({"public_keys": [
            {"key_identifier": "py", "key": PYTHON_PEM, "is_current": true}
        ]});
        let keys = match PublicKeys::parse(&json.to_string()) {
            Ok(k) => k,
            Err(e) => unreachable!("{e}"),
        };
        let verify = |body: &str| {
            keys.verify(Some(b"py"), Some(PYTHON_SIGNATURE.as_bytes()), body.as_bytes())
        };
        assert_eq!(verify(PYTHON_BODY), Ok(()));
        assert_eq!(verify(&PYTHON_BODY.replace("python", "pythom")), Err(Refused::BadSignature));
    }
}
