"""A throwaway Redis (Debian's redis-server) on a free loopback port, for the rate-limit
counters shared by several key service replicas. Never the system service."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from support.service import free_port


class Redis:
    def __init__(self, cpu: str | None = None):
        # `cpu`: pinned there with taskset (the benches keep it off the measured core).
        self.cpu = cpu
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup.sh (Debian package redis-server)")
        self.bin = found
        self.dir = Path(tempfile.mkdtemp(prefix="keygate-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> Redis:
        pin = ["taskset", "-c", self.cpu] if self.cpu else []
        self.proc = subprocess.Popen(
            [*pin, self.bin, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.command("PING") == "+PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def command(self, *words: str) -> str | None:
        """One inline command; the first line of the reply, or None when Redis is not there."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall((" ".join(words) + "\r\n").encode())
                return s.recv(65536).split(b"\r\n", 1)[0].decode()
        except OSError:
            return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
