//! New secrets: the one place keygate makes a key, for `keygate key new` and the key
//! service alike.

use base64::Engine as _;

/// What every key keygate makes starts with.
pub const PREFIX: &str = "kg_";

/// A new key: 256 bits from the OS random source, as `kg_<43 base64url characters>`.
pub fn new_secret() -> Result<String, String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("OS random source: {e}"))?;
    Ok(format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_the_prefix_and_43_base64url_characters() {
        let a = new_secret().unwrap_or_default();
        let b = new_secret().unwrap_or_default();
        let body = a.strip_prefix(PREFIX).unwrap_or_default();
        assert_eq!(body.len(), 43, "{a}");
        assert!(body.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }
}
