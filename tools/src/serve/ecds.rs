//! `--ecds-file`: the whole table as an Envoy ECDS file for the keygate filter (the format of
//! `envoy/ecds/keygate.yaml`), rewritten after every change, atomically by rename, so a
//! plain Envoy watching the file picks it up with no other tooling.

use crate::serve::admin::with_digest;
use crate::serve::db::Db;
use keygate::core::policy::Policy;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub struct Ecds {
    path: PathBuf,
    /// The plugin configuration without `keys` (`--ecds-base`).
    base: Map<String, Value>,
    /// The `.wasm` Envoy loads (`--ecds-wasm`).
    wasm: String,
}

impl Ecds {
    pub fn new(path: PathBuf, base: Option<&Path>, wasm: String) -> Result<Ecds, String> {
        let base = match base {
            None => Map::new(),
            Some(file) => {
                let text = std::fs::read(file)
                    .map_err(|e| format!("--ecds-base {}: {e}", file.display()))?;
                match serde_json::from_slice(&text) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => {
                        return Err(format!(
                            "--ecds-base {}: expected a JSON object",
                            file.display()
                        ))
                    }
                    Err(e) => return Err(format!("--ecds-base {}: {e}", file.display())),
                }
            }
        };
        if base.contains_key("keys") {
            return Err("--ecds-base: must not hold keys (the service writes them)".into());
        }
        let ecds = Ecds { path, base, wasm };
        ecds.configuration(Vec::new())
            .map_err(|e| format!("--ecds-base: not a valid plugin configuration: {e}"))?;
        Ok(ecds)
    }

    /// The plugin configuration with these keys, checked by the filter's compiler.
    fn configuration(&self, keys: Vec<Value>) -> Result<String, String> {
        let mut config = Map::new();
        config.insert("keys".into(), Value::Array(keys));
        config.extend(self.base.clone());
        let text = Value::Object(config).to_string();
        Policy::from_json(text.as_bytes()).map_err(|e| e.to_string())?;
        Ok(text)
    }

    /// The ECDS document for this table, at this change number.
    pub fn render(&self, keys: Vec<Value>, version: i64) -> Result<String, String> {
        let configuration = self.configuration(keys)?;
        let doc = json!({
            "version_info": version.to_string(),
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": "keygate",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "keygate",
                        "root_id": "keygate",
                        "failure_policy": "FAIL_CLOSED",
                        "vm_config": {
                            "vm_id": "keygate",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": { "local": { "filename": self.wasm } }
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": configuration
                        }
                    }
                }
            }]
        });
        let yaml = serde_norway::to_string(&doc).map_err(|e| e.to_string())?;
        Ok(format!(
            "# Written by keygate serve after every change; edits here are overwritten.\n{yaml}"
        ))
    }

    /// Writes beside the target and renames over it, so Envoy never reads half a file.
    fn write(&self, text: &str) -> Result<(), String> {
        let name =
            self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    async fn refresh(self: &Arc<Self>, db: &Db) -> Result<i64, String> {
        let (last, _) = db.feed_state().await.map_err(|e| e.message)?;
        // Read after the change number: the file is at least as new as its version.
        let keys = db.all().await.map_err(|e| e.message)?;
        // Compiling a large table takes a while: off the threads that answer requests.
        let ecds = self.clone();
        tokio::task::spawn_blocking(move || {
            let text = ecds.render(keys.iter().map(with_digest).collect(), last)?;
            ecds.write(&text)
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(last)
    }
}

/// Writes the file at start, then whenever this replica changed something or the feed moved
/// (another replica's change), checked every second.
pub async fn run(ecds: Ecds, db: Arc<Db>, changed: Arc<Notify>) {
    let ecds = Arc::new(ecds);
    let mut written = None;
    loop {
        let moved = match db.feed_state().await {
            Ok((last, _)) => written != Some(last),
            Err(_) => false,
        };
        if moved {
            match ecds.refresh(&db).await {
                Ok(version) => written = Some(version),
                Err(e) => eprintln!("keygate serve: --ecds-file not written: {e}"),
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
