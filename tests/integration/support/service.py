"""Helpers for the key service tests: the real `keygate serve` binary on free loopback ports,
a throwaway PostgreSQL (Debian's binaries, initdb and pg_ctl in a temporary folder, no
system service), and a small HTTP client.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
KEYGATE = Path(os.environ.get("KEYGATE_BIN", ROOT / "target" / "debug" / "keygate"))
UNAUTHORIZED = b'{"error": "Unauthorized", "message": "Invalid API key"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def request(port: int, method: str, path: str, body=None, headers=None, timeout=30) -> Answer:
    """One HTTP/1.1 request; `body` is sent as JSON unless it is bytes."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        # A service may answer before it has read the whole body (a 413 for a body over its
        # limit) and close: the rest of the body then meets a closed socket, and the answer
        # is already there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


class Service:
    """One `keygate serve` process: `start()` waits for its listening line."""

    def __init__(self, db: str, workdir: Path, tokens=("kg_admin_token_one",), env=None, args=()):
        self.db, self.workdir, self.tokens = db, Path(workdir), list(tokens)
        self.admin_port, self.filter_port, self.ratelimit_port = free_port(), free_port(), free_port()
        self.extra_env, self.args = dict(env or {}), list(args)
        self.proc = None
        self.started_once = False
        self.lines: list[str] = []
        self.errors: list[str] = []

    @property
    def token(self) -> str:
        return self.tokens[0]

    def command(self) -> list[str]:
        return [str(KEYGATE), "serve", "--db", self.db,
                "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--filter-listen", f"127.0.0.1:{self.filter_port}",
                "--ratelimit-listen", f"127.0.0.1:{self.ratelimit_port}", *self.args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
        env["KEYGATE_ADMIN_TOKEN_SHA256"] = ",".join(sha256_hex(t) for t in self.tokens)
        env.update(self.extra_env)
        return env

    def start(self, timeout=30.0) -> Service:
        # Ports are picked free but bound only now: another process can take one in between.
        # A first start then picks new ones; a restart must keep its ports (Envoy points at them).
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as e:
                if self.started_once or "Address already in use" not in str(e) or attempt == 2:
                    raise
                self.admin_port, self.filter_port, self.ratelimit_port = free_port(), free_port(), free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> Service:
        self.lines, self.errors = [], []
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=self.environment(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        errors = threading.Thread(target=self._drain, args=(self.proc.stderr, self.errors), daemon=True)
        errors.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("keygate serve: admin http://"):
                threading.Thread(target=self._drain, args=(self.proc.stdout, self.lines), daemon=True).start()
                self.started_once = True
                return self
        self.proc.wait(timeout=5)
        # The process is gone: its standard error is all there, once the reader has read it.
        errors.join(timeout=5)
        raise RuntimeError(f"keygate serve did not start: {self.output()}")

    @staticmethod
    def _drain(stream, into):
        for line in stream:
            into.append(line)

    def output(self) -> str:
        return "".join(self.lines) + "".join(self.errors)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> Service:
        self.stop()
        return self.start()

    # The admin API, with this service's token unless told otherwise.
    def admin(self, method, path, body=None, token=None, headers=None) -> Answer:
        headers = dict(headers or {})
        token = self.token if token is None else token
        if token:
            headers["authorization"] = f"Bearer {token}"
        return request(self.admin_port, method, path, body, headers)

    def filter(self, path) -> Answer:
        return request(self.filter_port, "GET", path)

    def create(self, entry: dict) -> tuple[str, dict]:
        r = self.admin("POST", "/v1/keys", entry)
        assert r.status == 201, r
        body = r.json()
        return body["key"], body["entry"]

    def cursor(self) -> str:
        return self.filter("/v1/filter/changes").json()["cursor"]

    def changes(self, cursor: str) -> dict:
        r = self.filter(f"/v1/filter/changes?after={cursor}")
        assert r.status == 200, r
        return r.json()


def run_keygate(*args, env=None, input=None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    full_env.update(env or {})
    return subprocess.run([str(KEYGATE), *args], env=full_env, input=input, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def postgres_bin() -> Path:
    """Debian's PostgreSQL binaries (scripts/setup.sh installs the package). Missing: fail."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup.sh (Debian package postgresql)")
    return Path(found[-1]).parent


class Postgres:
    """A throwaway PostgreSQL cluster owned by the postgres user, on a free loopback port."""

    def __init__(self):
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="keygate-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.started = False

    def _as_postgres(self, *cmd, check=True):
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "kg")
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                          "-w", "start", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200")
        self.started = True
        return self

    def createdb(self, name: str) -> str:
        self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "kg", name)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgres://kg@127.0.0.1:{self.port}/{name}"

    def scalar(self, name: str, query: str) -> str:
        """The one value `query` answers in database `name`."""
        out = self._as_postgres(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "kg",
                                "-d", name, "-tAc", query)
        return out.stdout.strip()

    def stop(self):
        if self.started:
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop",
                              check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
