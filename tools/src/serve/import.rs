//! `keygate serve --import FILE`: the keys of a plugin configuration, added at start when
//! their id is not in the database yet. It moves a static table into the service (digests
//! stay digests), and seeds the demo. The whole file is compiled first with the filter's
//! compiler, so a refused entry stops the service before anything is imported.

use super::db::{Db, Touched};
use super::request::check;
use keygate::core::hex;
use keygate::core::keytable::sha256;
use keygate::core::policy::Policy;
use serde_json::Value;
use std::path::Path;

/// Keys per transaction: one commit (one fsync) per thousand keys rather than per key, and
/// still no large transaction. 1,000,000 keys import in about 5.5 minutes on SQLite here.
const BATCH: usize = 1000;

/// What was added and what was already there.
pub struct Imported {
    pub added: usize,
    pub kept: usize,
}

pub async fn import(db: &Db, path: &Path, now: String) -> Result<Imported, String> {
    let text = std::fs::read(path).map_err(|e| format!("--import {}: {e}", path.display()))?;
    let at = |e: String| format!("--import {}: {e}", path.display());
    Policy::from_json(&text).map_err(|e| at(e.to_string()))?;
    let doc: Value = serde_json::from_slice(&text).map_err(|e| at(e.to_string()))?;
    let keys = doc.get("keys").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut result = Imported { added: 0, kept: 0 };
    let mut pending = keys.into_iter().enumerate().peekable();
    while pending.peek().is_some() {
        let mut w = db.begin_write(now.clone()).await.map_err(|e| at(e.message))?;
        // Whether `w.seq` is still unused: the first key added takes the number the
        // transaction began with, every further one the next.
        let mut fresh = true;
        for (i, mut entry) in pending.by_ref().take(BATCH) {
            let Some(object) = entry.as_object_mut() else { continue };
            // The compiler above accepted the file, so each entry has exactly one of the two.
            let digest = match (object.shift_remove("sha256"), object.shift_remove("key")) {
                (Some(Value::String(written)), _) => written.to_ascii_lowercase(),
                (_, Some(Value::String(plain))) => hex::encode(&sha256(plain.as_bytes())),
                _ => return Err(at(format!("keys[{i}]: expected sha256 or key"))),
            };
            let key = check(entry).map_err(|e| at(format!("keys[{i}]: {}", e.message)))?;
            if w.get(&key.id).await.map_err(|e| at(e.message))?.is_some() {
                result.kept += 1;
                continue;
            }
            if !fresh {
                w.next_change().await.map_err(|e| at(e.message))?;
            }
            fresh = false;
            w.insert(&key.row(&digest))
                .await
                .map_err(|e| at(format!("keys[{i}]: {}", e.message)))?;
            // One change (and one audit record) per key, as if an admin had created it.
            w.touched(&Touched { sha256: digest, origins: key.origins.clone() })
                .await
                .map_err(|e| at(e.message))?;
            w.audit("import", "create", &key.id, None).await.map_err(|e| at(e.message))?;
            result.added += 1;
        }
        // Nothing added: dropping the write rolls back its unused number.
        if !fresh {
            w.commit().await.map_err(|e| at(e.message))?;
        }
    }
    Ok(result)
}
