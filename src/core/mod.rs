//! The pure core: the configuration schema, its compiler, and the whole decision.
//!
//! Read top to bottom, a request goes `token` (the bearer key) → `keytable` (digest → key)
//! → `rules`, `path`, `cors` and `window` (may it do this, from there, now?) → `verdict`;
//! `decide` strings these together. A configuration goes `config` (the JSON schema) →
//! `parse` (reads it, streaming keys) → `compile` (checks and lookup structures) → `policy`.
//! Nothing here calls the host.
//!
//! Where things go: a new request rule in `decide` and the module holding what it reads; a
//! new configuration field in `config`, checked in `compile`.

pub mod compile;
pub mod config;
pub mod cors;
pub mod decide;
pub mod entry;
pub mod hex;
pub mod keytable;
pub mod parse;
pub mod path;
pub mod policy;
pub mod remote;
pub mod response;
pub mod rules;
pub mod tag;
pub mod timestamp;
pub mod token;
pub mod verdict;
pub mod verified;
pub mod window;
