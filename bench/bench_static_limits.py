"""The static table at its limits, for the README's "static table or key service" advice:
per table size, the configuration's size, the filter's own configure time (its
`configured N keys in M ms` line), Envoy's RSS, and the largest table an Istio WasmPlugin
holds under etcd's 1.5 MiB request limit. Loopback only.

    .venv/bin/python bench/bench_static_limits.py [--sizes 10000,100000,1000000]

Results are printed and written to bench/results/<date>-static-limits.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from support.harness import Envoy
from support.soak import rss_kib

ROOT = Path(__file__).resolve().parents[1]

ETCD_LIMIT = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)


def table(n: int) -> dict:
    """n backend keys as an operator writes them: an id, an owner, a digest."""
    return {"keys": [{"id": f"customer-{i:07d}", "owner": f"org-{i // 10:06d}",
                      "sha256": hashlib.sha256(f"bench-static-{i}".encode()).hexdigest()} for i in range(n)]}


def wasmplugin_bytes(n: int) -> int:
    doc = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
           "metadata": {"name": "keygate", "namespace": "istio-system"},
           "spec": {"url": "oci://registry.example.com/keygate:0.1.0", "pluginName": "keygate", "phase": "AUTHN",
                    "failStrategy": "FAIL_CLOSE", "pluginConfig": table(n)}}
    # etcd stores the object as the API server encodes it (protobuf or JSON); JSON is the
    # larger and what `kubectl apply` sends, so it is the bound that matters.
    return len(json.dumps(doc, separators=(",", ":")).encode())


def largest_wasmplugin() -> int:
    lo, hi = 1, 100_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if wasmplugin_bytes(mid) <= ETCD_LIMIT:
            lo = mid
        else:
            hi = mid - 1
    return lo


def measure(n: int) -> tuple[int, int, float, float]:
    """(config bytes, configure ms per VM as the filter logs it, RSS MiB, start-up seconds)."""
    config = json.dumps(table(n))
    start = time.monotonic()
    e = Envoy(plugin_config=config).start(timeout=600)
    try:
        started = time.monotonic() - start
        time.sleep(1)
        rss = rss_kib(e.proc.pid) / 1024
        took = [int(m) for m in re.findall(rf"configured {n} keys in (\d+) ms", e.log())]
    finally:
        e.stop()
    return len(config.encode()), max(took) if took else -1, rss, started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,10000,100000,1000000")
    args = ap.parse_args()
    lines = [
        f"# keygate static table limits {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "Envoy 1.40.0, `--concurrency 1` (one worker VM plus the main thread's), backend keys with id, owner "
        "and digest. Configure time is the filter's own log line (the slowest VM); RSS is the whole Envoy.",
        "",
        "| keys | configuration | configure, per VM | Envoy RSS | Envoy ready after |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in [int(s) for s in args.sizes.split(",")]:
        size, ms, rss, started = measure(n)
        lines.append(f"| {n:,} | {size / 2**20:.2f} MiB | {ms:,} ms | {rss:.0f} MiB | {started:.1f} s |")
        print(lines[-1], flush=True)
    biggest = largest_wasmplugin()
    lines += ["", f"Largest table in one Istio WasmPlugin under etcd's 1.5 MiB: **{biggest:,} keys** "
                  f"({wasmplugin_bytes(biggest):,} bytes as JSON). `kubectl apply` (client-side) also keeps the "
                  "object in its last-applied annotation, which halves that: use server-side apply.", ""]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-static-limits.md"
    out.write_text(text + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
