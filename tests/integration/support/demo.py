"""The shipped demo configuration (envoy/envoy.yaml) on free ports, for the tests that run it
beside the real key service (test_demo_config.py, test_console.py)."""

from __future__ import annotations

import yaml

from support.harness import ROOT, Envoy, free_port

DEMO = ROOT / "envoy" / "envoy.yaml"


def on_free_ports(doc: dict, key_service_port: int | None = None,
                  ratelimit_port: int | None = None) -> tuple[dict, int, int]:
    """A bootstrap with the demo's fixed ports replaced, so it can run beside anything; the
    key service's filter port (9101) becomes `key_service_port` and its rate-limit port (9102)
    `ratelimit_port`, or free ones."""
    api, admin, echo = free_port(), free_port(), free_port()
    text = yaml.safe_dump(doc)
    for old, new in ((10000, api), (9901, admin), (10001, echo), (9101, key_service_port or free_port()),
                     (9102, ratelimit_port or free_port())):
        text = text.replace(f"port_value: {old}", f"port_value: {new}")
    return yaml.safe_load(text), api, admin


def demo_envoy(key_service_port: int, ratelimit_port: int | None = None) -> Envoy:
    """The demo Envoy with two workers (each its own VM and cache), started, its filter's key
    service on `key_service_port` and its rate-limit service on `ratelimit_port`."""
    doc, api, admin = on_free_ports(yaml.safe_load(DEMO.read_text()), key_service_port, ratelimit_port)
    return Envoy(bootstrap=doc, port=api, admin_port=admin, concurrency=2).start()
