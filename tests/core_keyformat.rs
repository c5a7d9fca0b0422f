//! `key_format`: keygate's checksummed keys refused before any lookup when the checksum is
//! wrong, other keys looked up as before (or refused with `checksummed_only`).

mod common;

use common::{config_error, hex, policy, req};
use keygate::core::decide::{Decision, Failed, Remote};
use keygate::core::keyformat::{checksum, is_checksummed, LEN};
use keygate::core::remote::cache::RemoteCache;
use keygate::core::verdict::Outcome;

/// A key in keygate's format for `body` (43 base62 characters).
fn checksummed(body: &str) -> String {
    let signed = format!("kg_{body}");
    let check = checksum(signed.as_bytes());
    format!("{signed}{}", String::from_utf8_lossy(&check))
}

/// The same key with its last character changed: a wrong checksum.
fn broken(key: &str) -> String {
    let mut bytes = key.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'a' { b'b' } else { b'a' };
    String::from_utf8_lossy(&bytes).into_owned()
}

const BODY: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg";

fn outcome(format: &str, table: &[&str], presented: &str) -> Outcome {
    let keys: Vec<String> = table
        .iter()
        .enumerate()
        .map(|(i, k)| format!(r#"{{"id":"k{i}","sha256":"{}"}}"#, hex(k)))
        .collect();
    let p = policy(&format!(r#"{{"keys":[{}],"key_format":"{format}"}}"#, keys.join(",")));
    req("GET", "/x").auth(&format!("Bearer {presented}")).decide(&p, 0).outcome
}

#[test]
fn the_format_is_prefix_body_and_checksum() {
    let good = checksummed(BODY);
    assert_eq!(good.len(), LEN);
    assert!(is_checksummed(good.as_bytes()));
    for bad in [
        broken(&good),
        good[..LEN - 1].to_string(),
        format!("{good}0"),
        good.replacen("kg_", "kh_", 1),
        checksummed(&BODY.replacen('0', "-", 1)),
        String::new(),
    ] {
        assert!(!is_checksummed(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn each_key_format_refuses_what_it_says_and_looks_up_the_rest() {
    let good = checksummed(BODY);
    let bad = broken(&good);
    let other = "legacy-key-of-another-format";
    // Every string below is in the table: only key_format can refuse it.
    let table = [good.as_str(), bad.as_str(), other];
    let cases = [
        ("any", &good, Outcome::Allowed),
        ("any", &bad, Outcome::Allowed),
        ("any", &other.to_string(), Outcome::Allowed),
        ("checksummed", &good, Outcome::Allowed),
        ("checksummed", &bad, Outcome::DeniedChecksum),
        ("checksummed", &other.to_string(), Outcome::Allowed),
        ("checksummed_only", &good, Outcome::Allowed),
        ("checksummed_only", &bad, Outcome::DeniedChecksum),
        ("checksummed_only", &other.to_string(), Outcome::DeniedChecksum),
    ];
    for (format, presented, expected) in cases {
        assert_eq!(outcome(format, &table, presented), expected, "{format} {presented}");
    }
    assert_eq!(Outcome::DeniedChecksum.name(), "denied_checksum");
    assert_eq!(Outcome::DeniedChecksum.reply(), Outcome::DeniedUnknown.reply(), "the same 401");
}

/// Whether deciding `presented` would ask the key service, or its outcome without asking.
fn asks(format: &str, presented: &str) -> Result<Outcome, ()> {
    let p = policy(&format!(
        r#"{{"keys":[],"key_format":"{format}","key_service":{{"cluster":"keys"}}}}"#
    ));
    let Some(cache) = p.remote.as_ref().and_then(|s| RemoteCache::new(s.cache)) else {
        unreachable!("a key service with a cache")
    };
    let header = format!("Bearer {presented}");
    let r = req("GET", "/x").auth(&header);
    match p.decide_with(&r.0, 0, Some(Remote { cache: &cache, failed: Failed::NONE })) {
        Decision::Done(v) => Ok(v.outcome),
        Decision::Ask(_) => Err(()),
    }
}

#[test]
fn a_wrong_checksum_never_asks_the_key_service() {
    let good = checksummed(BODY);
    assert_eq!(asks("checksummed", &good), Err(()));
    assert_eq!(asks("checksummed", &broken(&good)), Ok(Outcome::DeniedChecksum));
    assert_eq!(asks("checksummed", "other-format"), Err(()));
    assert_eq!(asks("checksummed_only", "other-format"), Ok(Outcome::DeniedChecksum));
    assert_eq!(asks("any", &broken(&good)), Err(()));
}

#[test]
fn key_format_is_refused_with_path_and_reason() {
    assert_eq!(
        config_error(r#"{"keys":[],"key_format":"crc"}"#),
        "key_format: unknown variant, expected one of `any`, `checksummed`, `checksummed_only` at line 1 column 29"
    );
}
