//! The compiled configuration the filter serves from, built once per configure by
//! `compile` (which also defines `Policy::from_json`).

use crate::core::config::Mode;
use crate::core::cors::CorsIndex;
use crate::core::keytable::KeyTable;
use crate::core::remote::KeyService;
use crate::core::rules::RuleSet;

#[derive(Debug)]
pub struct Policy {
    pub keys: KeyTable,
    /// Rule sets referenced by keys; index [`CORS_ENDPOINTS`] is `cors_endpoints`.
    pub rule_sets: Vec<RuleSet>,
    pub public: RuleSet,
    pub cors_index: CorsIndex,
    pub cors: CorsHeaders,
    pub forward: Forward,
    pub mode: Mode,
    /// Whether any key has `not_before` or `expires_at`: only then is the clock read.
    pub needs_clock: bool,
    /// The key service asked for keys the table does not hold (`key_service`).
    pub remote: Option<KeyService>,
}

/// Index of the top-level `cors_endpoints` in [`Policy::rule_sets`].
pub const CORS_ENDPOINTS: u32 = 0;

/// Header values for CORS responses, rendered once.
#[derive(Debug)]
pub struct CorsHeaders {
    pub allow_headers: Box<str>,
    pub expose_headers: Option<Box<str>>,
    pub max_age: Box<str>,
    pub allow_credentials: bool,
}

/// Where the authenticated identity goes upstream.
#[derive(Debug)]
pub struct Forward {
    pub key_id_header: Box<str>,
    pub owner_header: Box<str>,
    pub strip_authorization: bool,
    pub filter_state: bool,
}

/// A policy plus the warnings worth logging once (never containing a key).
#[derive(Debug)]
pub struct Compiled {
    pub policy: Policy,
    pub warnings: Vec<String>,
}

impl Policy {
    pub fn rule_set(&self, index: u32) -> Option<&RuleSet> {
        self.rule_sets.get(index as usize)
    }
}
