//! The pure core: the configuration schema, its compiler, the whole decision, what is sent
//! for it, and the remote key source's bookkeeping. Nothing here calls the host, so all of it
//! is tested natively (`cargo test`, in milliseconds).
//!
//! Read top to bottom, a request goes `token` (the bearer key) → `keytable` (digest → key)
//! → `rules`, `path`, `cors` and `window` (may it do this, from there, now?) → `decide`
//! (→ a `verdict`, or what to ask the key service first) → `response` (status, headers,
//! body). A configuration goes `config` (the JSON schema) → `parse` (reads it, streaming
//! keys) → `entry` (one key compiled) and `compile` (the rest, and the lookup structures)
//! → `policy`. `remote` holds the key service's protocol, the VM's cache of its answers and
//! the bookkeeping of lookups and the feed (`remote::source`: events in, streams out).
//! `tag` and `hex` serve them all.
//!
//! Where things go: a new request rule in `decide` and the module holding what it reads,
//! tested in `tests/core_decide.rs`; a new configuration field in `config`, checked in
//! `compile` (or `entry`, for a key's own fields); remote-key behaviour in `remote::source`,
//! tested in `tests/core_remote_source.rs`. Imports run one way: no two modules here import
//! each other.

pub mod compile;
pub mod config;
pub mod cors;
pub mod decide;
pub mod entry;
pub mod hex;
pub mod keyformat;
pub mod keytable;
pub mod limits;
pub mod parse;
pub mod path;
pub mod policy;
pub mod remote;
pub mod response;
pub mod rules;
pub mod tag;
pub mod timestamp;
pub mod token;
pub mod usage;
pub mod verdict;
pub mod verified;
pub mod window;
