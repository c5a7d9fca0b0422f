//! Finding keygate plugin configurations in the files operators keep them in.

use serde_json::Value;
use std::path::Path;

/// One plugin configuration found in a file: where it was, and its JSON.
pub struct PluginConfig {
    /// `""` for a plain JSON file, else e.g. `WasmPlugin keygate: ` (ready to prefix).
    pub place: String,
    pub json: Vec<u8>,
}

const ENVOY_WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

pub fn plugin_configs(path: &Path) -> Result<Vec<PluginConfig>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(vec![PluginConfig { place: String::new(), json: text }]);
    }
    let text =
        String::from_utf8(text).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    let mut found = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let yaml: serde_norway::Value = serde::Deserialize::deserialize(document)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value =
            serde_json::to_value(&yaml).map_err(|e| format!("{}: {e}", path.display()))?;
        collect(&doc, &mut found);
    }
    if found.is_empty() {
        return Err(format!(
            "{}: no keygate configuration found (expected JSON, an Istio WasmPlugin, an Envoy Gateway \
             EnvoyExtensionPolicy, or an Envoy config with a wasm filter)",
            path.display()
        ));
    }
    Ok(found)
}

fn collect(doc: &Value, found: &mut Vec<PluginConfig>) {
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    match doc.get("kind").and_then(Value::as_str) {
        Some("WasmPlugin") => {
            if let Some(config) = doc.pointer("/spec/pluginConfig") {
                found.push(PluginConfig {
                    place: format!("WasmPlugin {name}: "),
                    json: config.to_string().into_bytes(),
                });
            }
        }
        Some("EnvoyExtensionPolicy") => {
            let wasms = doc
                .pointer("/spec/wasm")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (i, wasm) in wasms.iter().enumerate() {
                if let Some(config) = wasm.get("config") {
                    let place = format!("EnvoyExtensionPolicy {name} wasm[{i}]: ");
                    found.push(PluginConfig { place, json: config.to_string().into_bytes() });
                }
            }
        }
        _ => envoy_wasm_filters(doc, found),
    }
}

/// Wasm filter configurations anywhere in an Envoy config (bootstrap or xDS resource).
fn envoy_wasm_filters(v: &Value, found: &mut Vec<PluginConfig>) {
    match v {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(ENVOY_WASM) {
                let name = v.pointer("/config/name").and_then(Value::as_str).unwrap_or("?");
                if let Some(json) = v.pointer("/config/configuration/value").and_then(Value::as_str)
                {
                    found.push(PluginConfig {
                        place: format!("wasm filter {name}: "),
                        json: json.as_bytes().to_vec(),
                    });
                }
            }
            map.values().for_each(|child| envoy_wasm_filters(child, found));
        }
        Value::Array(items) => items.iter().for_each(|child| envoy_wasm_filters(child, found)),
        _ => {}
    }
}
