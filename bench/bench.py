"""keygate's cost beside what an operator would run instead, same machine, same run.

Every variant is an Envoy with one worker pinned to CPU 1, a direct-response route, and
wrk pinned to CPU 0. Variants run interleaved, round after round; the table reports the
median of the rounds. Loopback only. Run through bench/run.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from support.harness import ROUTER, envoy_command, free_port, hcm, http_filter_wasm, listener, static_cluster

ROOT = Path(__file__).resolve().parents[1]

KEYGATE = ROOT / "dist" / "keygate.wasm"
FLOOR = ROOT / "bench" / "floor" / "target" / "wasm32-wasip1" / "release" / "wasm_floor.wasm"
ORIGIN = "https://app.example.com"
CORS_KEY = "bench-cors-key"
DIRECT = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]


def bench_keys(n: int) -> list[str]:
    return [f"bench-key-{i:07d}" for i in range(n)]


def keygate_config(n: int, cors: bool = False) -> dict:
    keys = [{"id": f"k{i}", "sha256": hashlib.sha256(k.encode()).hexdigest()} for i, k in enumerate(bench_keys(n))]
    config = {"keys": keys}
    if cors:
        keys.append({"id": "web", "sha256": hashlib.sha256(CORS_KEY.encode()).hexdigest(),
                     "cors": {"allowed_origins": [ORIGIN]}, "resources": ["stream-7f3a"]})
        config["cors_endpoints"] = [
            {"methods": ["POST"], "paths": ["/api/stream", "/api/multistream/target"]},
            {
                "methods": ["GET", "PATCH"],
                "paths": ["/api/stream/{id}", "/api/multistream/target/{id}", "/api/asset/{id}"],
            },
            {"methods": ["GET"], "paths": ["/api/stream/{id}/sessions", "/api/session/{id}", "/data/views/{id}/total"]},
        ]
    return config


def native_filter(n: int) -> dict:
    return {"name": "envoy.filters.http.api_key_auth", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
        "credentials": [{"key": k, "client": f"k{i}"} for i, k in enumerate(bench_keys(n))],
        "key_sources": [{"header": "Authorization"}]}}


class Variant:
    """One Envoy process serving one variant on its own port."""

    def __init__(self, name: str, filters: list, runtime: str = "envoy.wasm.runtime.v8", extra_listeners=(),
                 extra_clusters=()):
        self.name, self.port, self.admin = name, free_port(), free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"keygate-bench-{name}-"))
        self.bootstrap = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin}}},
            "static_resources": {
                "listeners": [listener("bench", self.port, hcm("bench", filters + [ROUTER], DIRECT))]
                + list(extra_listeners),
                "clusters": list(extra_clusters),
            },
        }
        self.proc = None
        self.command: list[str] | None = None  # replaces `taskset -c 1 envoy`, e.g. to run under valgrind

    def start(self, timeout: float = 120) -> Variant:
        cfg = self.dir / "envoy.json"
        cfg.write_text(json.dumps(self.bootstrap))
        self.log = self.dir / "envoy.log"
        cmd = (self.command or ["taskset", "-c", "1"] + envoy_command()) + [
            "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart", "--base-id", str(self.port), "-l", "info"]
        with open(self.log, "wb") as log:  # Envoy keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: Envoy exited:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not ready")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def configure_ms(self) -> list[int]:
        return [int(m) for m in re.findall(r"configured \d+ keys in (\d+) ms", self.log.read_text())]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def keygate_variant(name, n, cors=False, wasm=KEYGATE, runtime="envoy.wasm.runtime.v8") -> Variant:
    f = http_filter_wasm(keygate_config(n, cors), wasm=wasm)
    f["typed_config"]["config"]["vm_config"]["runtime"] = runtime
    return Variant(name, [f])


def keygate_usage_variant(n: int, key_server_port: int, usage: bool = True, upstream_status: bool = False) -> Variant:
    """keygate with `n` static keys and a key service (the same in-process one as the remote
    row), with usage counting on (its batches sent every 10 s: about one flush in a counted
    run; the upstream's status classes too with `upstream_status`) or off: the pair prices
    the counting alone."""
    config = {**keygate_config(n), "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 600_000}}
    if usage:
        config["usage"] = {"flush_ms": 10_000, **({"upstream_status": True} if upstream_status else {})}
    name = ("keygate_usage_status" if upstream_status else "keygate_usage") if usage else "keygate_service"
    return Variant(name, [http_filter_wasm(config)],
                   extra_clusters=[static_cluster("keygate-keys", key_server_port)])


def keygate_remote_variant(n: int) -> tuple[Variant, object]:
    """keygate with an empty static table and a key service (tests/integration/support/keyserver.py,
    in this process) holding the `n` bench keys: after warm-up every valid key is a cache hit.
    The feed is polled every 10 minutes and answers live a day, so counted requests see
    neither a poll nor a refetch: the row prices a cached remote key, nothing else."""
    from support.keyserver import KeyServer

    server = KeyServer(authority="keygate-keys").start()
    for i, k in enumerate(bench_keys(n)):
        server.add(k, {"id": f"k{i}"}, feed=False)
    config = {"keys": [], "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 600_000, "timeout_ms": 60_000,
                                          "cache": {"ttl_seconds": 86_400}}}
    v = Variant(
        "keygate_remote", [http_filter_wasm(config)], extra_clusters=[static_cluster("keygate-keys", server.port)]
    )
    return v, server


def ext_authz_variant(n) -> Variant:
    auth_port = free_port()
    authz = {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "http_service": {
            "server_uri": {"uri": f"http://127.0.0.1:{auth_port}", "cluster": "auth", "timeout": "1s"},
            "authorization_request": {"allowed_headers": {"patterns": [
                {"exact": "authorization"}, {"exact": "origin"}, {"exact": "access-control-request-method"}]}},
            "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-api-key-id"}]}}},
        "failure_mode_allow": False}}
    auth = listener("auth", auth_port, hcm("auth", [http_filter_wasm(keygate_config(n)), ROUTER], DIRECT))
    return Variant("ext_authz", [authz], extra_listeners=[auth], extra_clusters=[static_cluster("auth", auth_port)])


MIX_REQUESTS = {
    "valid": lambda n: ("GET", "/api/x", {"Authorization": f"Bearer {bench_keys(n)[n // 2]}"}),
    "unknown": lambda n: ("GET", "/api/x", {"Authorization": "Bearer not-a-configured-key-0000000"}),
    "malformed": lambda n: ("GET", "/api/x", {"Authorization": "Bearer  two-spaces"}),
    "preflight": lambda n: (
        "OPTIONS",
        "/api/stream/stream-7f3a",
        {"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"},
    ),
    "cors": lambda n: ("GET", "/api/stream/stream-7f3a", {"Authorization": f"Bearer {CORS_KEY}", "Origin": ORIGIN}),
}


def cpu_ns(pid: int) -> int:
    """CPU time the process's threads have run, in nanoseconds (schedstat: no tick rounding)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def wrk(port: int, mix: str, n: int, seconds: float, workdir: Path, pid: int | None = None) -> dict:
    """One load cell. With `pid`, also the Envoy CPU time per request (`cpu_us`): unlike
    req/s it does not depend on how fast the load generator was served in that second."""
    method, path, headers = MIX_REQUESTS[mix](n)
    script = workdir / f"{mix}.lua"
    script.write_text(
        f'wrk.method = "{method}"\n' + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    )
    cpu_before = cpu_ns(pid) if pid else 0
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            "-c32",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    cpu = cpu_ns(pid) - cpu_before if pid else 0
    if "Requests/sec:" not in out:
        raise RuntimeError(f"wrk against :{port} printed no result:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "socket_errors": errors.group(1) if errors else "",
            "cpu_us": cpu / 1000 / requests if pid and requests else float("nan")}


def probe_runtimes() -> dict[str, str]:
    """Whether keygate loads in each wasm runtime Envoy names (only V8 does in this build)."""
    result = {}
    for runtime in ["envoy.wasm.runtime.v8", "envoy.wasm.runtime.wamr", "envoy.wasm.runtime.wasmtime"]:
        v = keygate_variant("probe", 10, runtime=runtime)
        try:
            v.start()
            result[runtime] = "loads"
        except RuntimeError as e:
            lines = [ln for ln in str(e).splitlines()
                     if "wasm" in ln.lower() and ("fail" in ln.lower() or "unable" in ln.lower())]
            result[runtime] = "fails: " + (lines[-1].split("] ")[-1] if lines else "Envoy refused the config")
        finally:
            v.stop()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one short round at 10 and 100,000 keys (~1 minute)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--o3-wasm", type=Path, help="keygate built with opt-level 3, measured beside the default")
    ap.add_argument("--paired", type=int, metavar="N", default=0,
                    help="instead: N alternating 1-second cells per target ratio, median of the paired ratios")
    ap.add_argument("--probes", type=Path, metavar="DIR",
                    help="instead: price callbacks and host calls with the probe modules in DIR")
    ap.add_argument("--instructions", type=int, metavar="N", default=0,
                    help="instead: count instructions per request under callgrind, over N requests per row")
    ap.add_argument("--only", metavar="REGEX", help="with --instructions: only no auth and the variants whose name "
                    "matches (add sdk_floor|native to the regex for the ratios)")
    ap.add_argument(
        "--keygate-wasm",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="with --instructions: also count this keygate build (10 keys; the count is the same at 100,000); "
        "with --memory: measure it",
    )
    ap.add_argument("--warmup", type=int, metavar="N", default=0,
                    help="with --instructions: warm-up requests per row (default: 2,000 or N, whichever is more)")
    ap.add_argument("--memory", action="store_true", help="instead: memory per VM for 100,000 keys")
    args = ap.parse_args()
    if args.memory:
        return memory(wasm=args.keygate_wasm[0] if args.keygate_wasm else KEYGATE)
    if args.instructions:
        return instructions(args.instructions, warmup=args.warmup or max(2000, args.instructions), only=args.only,
                            extra_wasm=args.keygate_wasm)
    if args.probes:
        return probes(args.probes, args.rounds, args.seconds)
    if args.paired:
        return paired(args.paired)
    sizes = [10, 100_000] if args.quick else [10, 10_000, 100_000]
    rounds, seconds = (1, 2) if args.quick else (args.rounds, args.seconds)
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-"))

    runtimes = probe_runtimes()
    fixed = {"no_auth": Variant("no_auth", []), "wasm_floor": Variant("wasm_floor", [http_filter_wasm("", wasm=FLOOR)])}
    for v in fixed.values():
        v.start()
    results: dict[tuple, list[dict]] = {}
    configure: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    try:
        for n in sizes:
            sized = {"native": Variant("native", [native_filter(n)]), "keygate": keygate_variant("keygate", n),
                     "keygate_cors": keygate_variant("keygate_cors", n, cors=True), "ext_authz": ext_authz_variant(n)}
            if args.o3_wasm:
                sized["keygate_o3"] = keygate_variant("keygate_o3", n, wasm=args.o3_wasm)
            for v in sized.values():
                v.start()
            configure[n] = sized["keygate"].configure_ms()
            plan = [("no_auth", "valid"), ("wasm_floor", "valid"), ("native", "valid"), ("native", "unknown"),
                    ("native", "malformed"), ("keygate", "valid"), ("keygate", "unknown"), ("keygate", "malformed"),
                    ("keygate", "preflight"), ("keygate_cors", "cors"), ("keygate_cors", "preflight"),
                    ("ext_authz", "valid"), ("ext_authz", "unknown")]
            if args.o3_wasm:
                plan += [("keygate_o3", "valid"), ("keygate_o3", "unknown")]
            everything = {**fixed, **sized}
            for r in range(rounds):
                for name, mix in plan:  # interleaved: each round runs every variant once
                    res = wrk(everything[name].port, mix, n, seconds, work)
                    results.setdefault((n, name, mix), []).append(res)
                    print(f"  {n:>7} keys  round {r + 1}  {name:<12} {mix:<9} {res['rps']:>9.0f} req/s", flush=True)
            rss[n] = sized["keygate"].rss_mib()
            for v in sized.values():
                v.stop()
    finally:
        for v in fixed.values():
            v.stop()
    report(results, configure, rss, runtimes, sizes, rounds, seconds)


def paired(n: int):
    """The target ratios measured as pairs of back-to-back 1-second cells (A B A B ...).

    A slow drift in the machine's speed hits both halves of a pair alike, so the median of
    the per-pair ratios is far steadier than a ratio of medians taken minutes apart.
    """
    big, small = 100_000, 10
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    v = {
        "keygate": keygate_variant("keygate", big),
        "keygate_10": keygate_variant("keygate_10", small),
        "floor": Variant("wasm_floor", [http_filter_wasm("", wasm=FLOOR)]),
        "native": Variant("native", [native_filter(big)]),
    }
    pairs = [
        ("keygate / wasm floor, valid key, 100,000 keys", "keygate", big, "floor", big, "valid", ">= 0.97"),
        ("keygate / wasm floor, unknown key, 100,000 keys", "keygate", big, "floor", big, "unknown", ">= 0.97"),
        ("keygate / native api_key_auth, valid key, 100,000 keys", "keygate", big, "native", big, "valid", ">= 0.90"),
        ("keygate 100,000 keys / 10 keys, valid key", "keygate", big, "keygate_10", small, "valid", ">= 0.97"),
    ]
    for x in v.values():
        x.start()
    lines = [f"# keygate paired ratios {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             f"{n} pairs of back-to-back 1 s cells each; load average at start {os.getloadavg()[0]:.2f}.", "",
             "| ratio | median | quartiles | target |", "|---|---:|---|---|"]
    try:
        for label, a, na, b, nb, mix, target in pairs:
            ratios = []
            for i in range(n):
                first, second = ((a, na), (b, nb)) if i % 2 == 0 else ((b, nb), (a, na))
                got = {name: wrk(v[name].port, mix, size, 1, work)["rps"] for name, size in (first, second)}
                ratios.append(got[a] / got[b])
            q = statistics.quantiles(ratios, n=4)
            lines.append(f"| {label} | {statistics.median(ratios):.3f} | {q[0]:.3f} - {q[2]:.3f} | {target} |")
            print(lines[-1], flush=True)
    finally:
        for x in v.values():
            x.stop()
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-paired.md"
    out.write_text(text)
    print("\n" + text + f"\nwritten to {out.relative_to(ROOT)}")


def probes(probe_dir: Path, rounds: int, seconds: float):
    """Prices each thing a wasm filter can do per request, against no auth, in one run.

    The probes (bench/probe/) are the least filter the host accepts plus one cost each: an
    exported callback, a host call. Every round runs every variant once, in an order that
    reverses each round; per round, each variant's cost is its time per request minus no
    auth's in that round, and the table shows the medians. Two measures: wall time per
    request (1/req/s) and Envoy's own CPU time per request.
    """
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    v = {"no_auth": Variant("no_auth", []), "native": Variant("native", [native_filter(10)]),
         "sdk_floor": Variant("wasm_floor", [http_filter_wasm("", wasm=FLOOR)])}
    for wasm in sorted(probe_dir.glob("probe-*.wasm")):
        name = wasm.stem
        v[name] = Variant(name, [http_filter_wasm("", wasm=wasm)])
    v["keygate"] = keygate_variant("keygate", 10)
    for x in v.values():
        x.start()
    rows: dict[str, list[dict]] = {name: [] for name in v}
    try:
        for r in range(rounds):
            order = list(v) if r % 2 == 0 else list(reversed(v))
            for name in order:
                rows[name].append(wrk(v[name].port, "valid", 10, seconds, work, pid=v[name].proc.pid))
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {rows[n][-1]['rps']:.0f}" for n in v), flush=True)
    finally:
        for x in v.values():
            x.stop()
    lines = [
        f"# keygate cost probes {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{rounds} rounds of {seconds:g} s cells, order reversed every round; Envoy one worker on CPU 1, wrk on CPU 0. "
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}). Extra = per-round difference to no auth, median "
        "(quartiles).",
        "",
        "| variant | req/s | extra wall us/req | Envoy CPU us/req | extra CPU us/req |",
        "|---|---:|---:|---:|---:|",
    ]

    def q(xs):
        qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        return f"{statistics.median(xs):.2f} ({qs[0]:.2f} - {qs[2]:.2f})"

    base = rows["no_auth"]
    for name, rs in rows.items():
        wall = [1e6 / a["rps"] - 1e6 / b["rps"] for a, b in zip(rs, base, strict=True)]
        cpu = [a["cpu_us"] - b["cpu_us"] for a, b in zip(rs, base, strict=True)]
        lines.append(f"| {name} | {median(rs, 'rps'):,.0f} | {q(wall)} | {median(rs, 'cpu_us'):.2f} | {q(cpu)} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-probes.md"
    out.write_text(text)
    print("\n" + text + f"\nwritten to {out.relative_to(ROOT)}")


def envoy_binary() -> str:
    """The Envoy executable itself (valgrind must run it directly, not the venv's wrapper)."""
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    found = sorted(ROOT.glob(".venv/lib/python*/site-packages/envoy/_bin/envoy"))
    if not found:
        raise RuntimeError("no Envoy binary: run scripts/setup.sh or set ENVOY_BIN")
    return str(found[0])


def keepalive_requests(port: int, mix: str, n_keys: int, count: int) -> None:
    """`count` requests of `mix` on one keep-alive connection, each checked for a reply."""
    import http.client

    method, path, headers = MIX_REQUESTS[mix](n_keys)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status >= 500:
            raise RuntimeError(f"{r.status} from :{port}")
        if r.will_close:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def instructions(count: int, warmup: int, only: str | None = None, extra_wasm: list[Path] = ()) -> None:
    """Instructions Envoy executes per request, counted by callgrind: the same figure on
    every run of the same binaries, however busy the machine is. Each variant runs under
    valgrind, is warmed up (V8 compiles hot wasm code in tiers), its counters are zeroed,
    and then exactly `count` keep-alive requests are counted."""
    probe_dir = ROOT / "bench" / "work" / "probes"
    plan = [("no_auth", Variant("no_auth", []), ["valid"], 10),
            ("native", Variant("native", [native_filter(100_000)]), ["valid", "unknown", "malformed"], 100_000),
            ("sdk_floor", Variant("wasm_floor", [http_filter_wasm("", wasm=FLOOR)]), ["valid"], 10)]
    for wasm in sorted(probe_dir.glob("probe-*.wasm")):
        plan.append((wasm.stem, Variant(wasm.stem, [http_filter_wasm("", wasm=wasm)]), ["valid"], 10))
    for wasm in extra_wasm:  # other keygate builds, e.g. to price one change
        plan.append((f"keygate {wasm.stem}", keygate_variant(wasm.stem, 10, wasm=wasm), ["valid", "unknown"], 10))
    remote, key_server = keygate_remote_variant(10)
    plan += [("keygate 10 keys", keygate_variant("keygate", 10), ["valid", "unknown"], 10),
             ("keygate 10 keys, key service, usage off", keygate_usage_variant(10, key_server.port, False), ["valid"],
              10),
             ("keygate 10 keys, key service, usage on", keygate_usage_variant(10, key_server.port), ["valid"], 10),
             ("keygate 10 keys, key service, usage on, upstream status",
              keygate_usage_variant(10, key_server.port, upstream_status=True), ["valid"], 10),
             ("keygate remote cached", remote, ["valid"], 10),
             ("keygate", keygate_variant("keygate", 100_000), ["valid", "unknown", "malformed", "preflight"], 100_000),
             ("keygate_cors", keygate_variant("keygate_cors", 100_000, cors=True), ["cors", "preflight"], 100_000)]
    results: dict[tuple[str, str], float] = {}
    envoy = envoy_binary()
    keep = re.compile(only or ".")
    for name, v, mixes, n_keys in plan:
        if not (keep.search(name) or name == "no_auth" or (name in ("native", "sdk_floor") and not only)):
            continue
        v.command = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--collect-atstart=yes",
                     f"--callgrind-out-file={v.dir}/callgrind.out.%p", envoy]
        v.start(timeout=600)
        try:
            for mix in mixes:
                keepalive_requests(v.port, mix, n_keys, warmup)
                subprocess.run(["callgrind_control", "-z", str(v.proc.pid)], check=True, capture_output=True)
                keepalive_requests(v.port, mix, n_keys, count)
                subprocess.run(["callgrind_control", "-d", str(v.proc.pid)], check=True, capture_output=True)
                dumps = sorted(v.dir.glob("callgrind.out.*"), key=lambda f: f.stat().st_mtime)
                total = 0
                for line in dumps[-1].read_text(errors="replace").splitlines():
                    if line.startswith(("summary:", "totals:")):
                        total = int(line.split()[1])
                results[(name, mix)] = total / count
                print(f"  {name:<26} {mix:<9} {total / count:>10,.0f} instructions/request", flush=True)
        finally:
            v.stop()
    key_server.kill()
    base = results[("no_auth", "valid")]
    floor, native = results.get(("sdk_floor", "valid"), float("nan")), results.get(("native", "valid"), float("nan"))
    lines = [f"# keygate instructions per request {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             f"callgrind, Envoy {envoy_version()} with one worker; {warmup:,} warm-up requests, then {count:,} "
             "counted keep-alive requests per row (all Envoy threads, instructions retired). Deterministic: "
             "a rerun of the same binaries gives the same figures within a fraction of a percent.", "",
             "The last two columns are the throughput ratios these counts predict (SDK floor / row, native / row, "
             "valid key) when every instruction costs the same.", "",
             "| variant | mix | instructions/request | over no auth | floor / row | native / row |",
             "|---|---|---:|---:|---:|---:|"]
    for (name, mix), ir in results.items():
        lines.append(f"| {name} | {mix} | {ir:,.0f} | {ir - base:+,.0f} | {floor / ir:.3f} | {native / ir:.3f} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-instructions.md"
    out.write_text(text)
    print("\n" + text + f"\nwritten to {out.relative_to(ROOT)}")


def memory(n: int = 100_000, wasm: Path = KEYGATE) -> None:
    """Memory keygate's table takes per VM: the RSS of Envoy running keygate with `n` keys
    minus that of Envoy running the floor filter given the very same configuration (so
    Envoy's own copies of the JSON cancel out), halved for the two VMs (main thread and
    the one worker), after the same warm-up load."""
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    config = keygate_config(n)
    v = {"keygate": keygate_variant("keygate", n, wasm=wasm),
         "floor": Variant("floor_same_config", [http_filter_wasm(config, wasm=FLOOR)])}
    try:
        for x in v.values():
            x.start()
            wrk(x.port, "valid", n, 2, work)
        rss = {name: x.rss_mib() for name, x in v.items()}
    finally:
        for x in v.values():
            x.stop()
    per_vm = (rss["keygate"] - rss["floor"]) / 2
    print(f"RSS with {n:,} keys: keygate {rss['keygate']:.1f} MiB, floor with the same configuration "
          f"{rss['floor']:.1f} MiB: {per_vm:.1f} MiB per keygate VM")


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def report(results, configure, rss, runtimes, sizes, rounds, seconds):
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()
    lines = [f"# keygate benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {sha}", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}; "
             f"Envoy {envoy_version()}, one worker on CPU 1, wrk -t1 -c32 on CPU 0; {rounds} interleaved round(s) of "
             f"{seconds:g} s per cell, medians shown. Load average before the report: {load[0]:.2f}.", "",
             f"keygate.wasm: {KEYGATE.stat().st_size:,} bytes. Wasm runtimes: " +
             "; ".join(f"`{k.split('.')[-1]}` {v}" for k, v in runtimes.items()) + ".", "",
             "| keys | variant | mix | req/s | p50 ms | p99 ms |", "|---:|---|---|---:|---:|---:|"]
    for (n, name, mix), rows in results.items():
        lines.append(f"| {n:,} | {name} | {mix} | {median(rows, 'rps'):,.0f} | {median(rows, 'p50_ms'):.3f} | "
                     f"{median(rows, 'p99_ms'):.3f} |")

    def rps(n, name, mix):
        rows = results.get((n, name, mix))
        return median(rows, "rps") if rows else float("nan")

    big, small = max(sizes), min(sizes)
    ratios = [
        (
            "keygate / wasm floor, valid key, {} keys".format(f"{big:,}"),
            rps(big, "keygate", "valid") / rps(big, "wasm_floor", "valid"),
            ">= 0.97",
        ),
        (
            "keygate / wasm floor, unknown key, {} keys".format(f"{big:,}"),
            rps(big, "keygate", "unknown") / rps(big, "wasm_floor", "valid"),
            ">= 0.97",
        ),
        (
            "keygate / native api_key_auth, valid key, {} keys".format(f"{big:,}"),
            rps(big, "keygate", "valid") / rps(big, "native", "valid"),
            ">= 0.90",
        ),
        (
            "keygate / ext_authz, valid key, {} keys".format(f"{big:,}"),
            rps(big, "keygate", "valid") / rps(big, "ext_authz", "valid"),
            ">= 2",
        ),
        (
            "keygate {} keys / {} keys, valid key".format(f"{big:,}", f"{small:,}"),
            rps(big, "keygate", "valid") / rps(small, "keygate", "valid"),
            ">= 0.97",
        ),
        (
            "wasm floor / native api_key_auth",
            rps(big, "wasm_floor", "valid") / rps(big, "native", "valid"),
            "(context)",
        ),
        ("keygate / no auth, valid key", rps(big, "keygate", "valid") / rps(big, "no_auth", "valid"), "(context)"),
    ]
    if (big, "keygate_o3", "valid") in results:
        ratios.append(
            (
                "keygate opt-level 3 / opt-level z, valid key",
                rps(big, "keygate_o3", "valid") / rps(big, "keygate", "valid"),
                "(context)",
            )
        )
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.3f} | {target} |" for name, value, target in ratios]
    lines += ["", "| keys | on_configure (ms, per VM as logged) | Envoy RSS after load (MiB) |", "|---:|---|---:|"]
    lines += [f"| {n:,} | {', '.join(map(str, configure[n]))} | {rss[n]:.1f} |" for n in sizes]
    if len(sizes) > 1:
        lines.append(f"\nRSS added by {big:,} keys over {small:,}: {rss[big] - rss[small]:.1f} MiB for the process "
                     f"(two keygate VMs: main thread and the worker).")
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-{sha}.md"
    out.write_text(text)
    print("\n" + text + f"\nwritten to {out.relative_to(ROOT)}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def envoy_version() -> str:
    out = subprocess.run(envoy_command() + ["--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
