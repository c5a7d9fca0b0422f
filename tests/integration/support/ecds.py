"""keygate's table delivered by extension config discovery (ECDS) from a watched file,
the way Istio delivers WasmPlugin updates: no listener drain, no restart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from support.harness import ROUTER, WASM, Envoy, echo_listener, hcm, http_filter_wasm, listener, static_cluster

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def ecds_bootstrap(e: Envoy, resource_dir: Path) -> dict:
    keygate = {
        "name": "keygate",
        "config_discovery": {
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(resource_dir / "keygate.yaml"),
                                       "watched_directory": {"path": str(resource_dir)}},
            },
            "type_urls": [WASM_TYPE],
        },
    }
    api = hcm("api", [keygate, ROUTER], [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
              access_log=str(e.access_log_path))
    return {
        "node": {"id": "keygate-test", "cluster": "keygate-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": e.admin_port}}},
        "static_resources": {
            "listeners": [listener("api", e.port, api), echo_listener(e.echo_port)],
            "clusters": [static_cluster("echo", e.echo_port)],
        },
    }


def discovery_response(plugin_config: dict | str, version: str) -> dict:
    wasm = http_filter_wasm(plugin_config, wasm=WASM)["typed_config"]
    return {"version_info": version, "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "keygate", "typed_config": wasm}]}


class EcdsEnvoy:
    """An Envoy whose keygate table is pushed by replacing a watched file."""

    def __init__(self, first_config: dict):
        self.envoy = Envoy()
        self.dir = self.envoy.workdir / "ecds"
        self.dir.mkdir()
        self.version = 0
        self._write(first_config)
        self.envoy.bootstrap = ecds_bootstrap(self.envoy, self.dir)

    def start(self) -> EcdsEnvoy:
        self.envoy.start()
        return self

    def _write(self, config) -> None:
        self.version += 1
        tmp = self.dir / f".keygate.yaml.{self.version}"
        tmp.write_text(json.dumps(discovery_response(config, str(self.version))))
        os.rename(tmp, self.dir / "keygate.yaml")  # atomic: Envoy sees the whole file or none

    def stat(self, name: str) -> int:
        """Envoy's count of ECDS updates of keygate's configuration (`update_success`,
        `update_rejected`, ...); KeyError when Envoy has no such stat."""
        return self.envoy.stat(f"extension_config_discovery.http_filter.keygate.{name}")

    def push(self, config, expect: str = "update_success", timeout: float = 20) -> None:
        """Replace the table; return once Envoy's own stats say it applied (or rejected) it."""
        before = self.stat(expect)
        self._write(config)
        deadline = time.monotonic() + timeout
        while self.stat(expect) <= before:
            if time.monotonic() > deadline:
                raise AssertionError(f"Envoy did not report {expect} within {timeout}s:\n{self.envoy.log()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.envoy.stop()
