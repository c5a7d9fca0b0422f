//! What keygate decided about one request, and the fixed responses it sends.

use crate::core::keytable::Key;

/// One outcome per counter. The names are part of the operator contract (docs/configuration.md, Counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A valid key, forwarded upstream with its identity.
    Allowed,
    /// A public endpoint called without a key.
    Public,
    PreflightAllowed,
    PreflightDenied,
    DeniedMissing,
    DeniedMalformed,
    /// A key in keygate's format whose checksum is wrong (`key_format`), refused unlooked-up.
    DeniedChecksum,
    DeniedUnknown,
    DeniedDisabled,
    DeniedExpired,
    DeniedNotYetValid,
    /// A backend key (no `cors`) sent from a browser.
    DeniedBackendKeyFromBrowser,
    DeniedOrigin,
    DeniedEndpoint,
    DeniedResource,
    /// The key service could not verify the key (or the origin of a preflight): 503.
    Unavailable,
}

/// The fixed local reply for a denial. Bodies never echo the key, path or origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub body: &'static str,
    /// `www-authenticate` value (RFC 6750 §3), on 401s only.
    pub www_authenticate: Option<&'static str>,
    /// `retry-after` value, on 503s only.
    pub retry_after: Option<&'static str>,
}

pub const UNAUTHORIZED_BODY: &str = r#"{"error": "Unauthorized", "message": "Invalid API key"}"#;

macro_rules! forbidden {
    ($message:literal) => {
        Reply {
            status: 403,
            body: concat!(r#"{"error": "Forbidden", "message": ""#, $message, r#""}"#),
            www_authenticate: None,
            retry_after: None,
        }
    };
}

const fn unauthorized(www_authenticate: &'static str) -> Reply {
    Reply {
        status: 401,
        body: UNAUTHORIZED_BODY,
        www_authenticate: Some(www_authenticate),
        retry_after: None,
    }
}

pub const UNAVAILABLE_BODY: &str =
    r#"{"error": "Service Unavailable", "message": "API key could not be verified"}"#;

impl Outcome {
    pub const ALL: [Outcome; 16] = [
        Outcome::Allowed,
        Outcome::Public,
        Outcome::PreflightAllowed,
        Outcome::PreflightDenied,
        Outcome::DeniedMissing,
        Outcome::DeniedMalformed,
        Outcome::DeniedChecksum,
        Outcome::DeniedUnknown,
        Outcome::DeniedDisabled,
        Outcome::DeniedExpired,
        Outcome::DeniedNotYetValid,
        Outcome::DeniedBackendKeyFromBrowser,
        Outcome::DeniedOrigin,
        Outcome::DeniedEndpoint,
        Outcome::DeniedResource,
        Outcome::Unavailable,
    ];

    /// The counter and log name of the outcome.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Public => "public",
            Outcome::PreflightAllowed => "preflight_allowed",
            Outcome::PreflightDenied => "preflight_denied",
            Outcome::DeniedMissing => "denied_missing",
            Outcome::DeniedMalformed => "denied_malformed",
            Outcome::DeniedChecksum => "denied_checksum",
            Outcome::DeniedUnknown => "denied_unknown",
            Outcome::DeniedDisabled => "denied_disabled",
            Outcome::DeniedExpired => "denied_expired",
            Outcome::DeniedNotYetValid => "denied_not_yet_valid",
            Outcome::DeniedBackendKeyFromBrowser => "denied_cors_backend_key",
            Outcome::DeniedOrigin => "denied_origin",
            Outcome::DeniedEndpoint => "denied_endpoint",
            Outcome::DeniedResource => "denied_resource",
            Outcome::Unavailable => "remote.unavailable",
        }
    }

    /// The local reply that enforces a denial; `None` for outcomes that are not denials.
    pub const fn reply(self) -> Option<Reply> {
        Some(match self {
            Outcome::Allowed | Outcome::Public | Outcome::PreflightAllowed => return None,
            Outcome::DeniedMissing => unauthorized("Bearer"),
            Outcome::DeniedMalformed
            | Outcome::DeniedChecksum
            | Outcome::DeniedUnknown
            | Outcome::DeniedDisabled
            | Outcome::DeniedExpired
            | Outcome::DeniedNotYetValid => unauthorized(r#"Bearer error="invalid_token""#),
            Outcome::DeniedBackendKeyFromBrowser => {
                forbidden!("API key does not allow CORS access")
            }
            Outcome::DeniedOrigin => forbidden!("Origin not allowed"),
            Outcome::DeniedEndpoint => forbidden!("Endpoint not allowed for this API key"),
            Outcome::DeniedResource => forbidden!("Resource not allowed for this API key"),
            Outcome::PreflightDenied => forbidden!("CORS preflight not allowed"),
            Outcome::Unavailable => Reply {
                status: 503,
                body: UNAVAILABLE_BODY,
                www_authenticate: None,
                retry_after: Some("1"),
            },
        })
    }
}

/// The decision for one request.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'p> {
    pub outcome: Outcome,
    /// The key the request presented, once it is known to be in the table.
    pub key: Option<&'p Key>,
    /// Whether the response may carry `access-control-allow-origin: <request origin>`.
    pub allow_origin: bool,
    /// Where the key was found, when the key service's cache answered.
    pub remote: RemoteUse,
}

/// What the remote cache contributed to a verdict, for the `remote.*` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteUse {
    #[default]
    None,
    /// A fresh positive answer.
    Hit,
    /// A fresh 404.
    NegativeHit,
    /// An expired answer, served because the service failed.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_documented_bytes() {
        let r = Outcome::DeniedUnknown.reply();
        assert_eq!(
            r.map(|r| r.body),
            Some(r#"{"error": "Unauthorized", "message": "Invalid API key"}"#)
        );
        assert_eq!(r.and_then(|r| r.www_authenticate), Some(r#"Bearer error="invalid_token""#));
        assert_eq!(Outcome::DeniedMissing.reply().and_then(|r| r.www_authenticate), Some("Bearer"));
        assert_eq!(
            Outcome::DeniedOrigin.reply().map(|r| (r.status, r.body)),
            Some((403, r#"{"error": "Forbidden", "message": "Origin not allowed"}"#))
        );
        assert_eq!(Outcome::Allowed.reply(), None);
    }

    #[test]
    fn all_is_in_discriminant_order() {
        // The glue indexes its counter ids by `outcome as usize`.
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Outcome::ALL.len());
    }
}
