"""A real browser (headless Chromium) calls keygate from a page on another origin.

The page and a report endpoint are served from http://127.0.0.1:<page port>; the API is
Envoy on another port, so every fetch with an Authorization header is cross-origin and
Chromium sends a real preflight first. What the page could read is posted back here.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support import cors_config as c
from support.harness import UNAUTHORIZED, forbidden, sha256_hex

PAGE = (Path(__file__).parent / "browser" / "page.html").read_bytes()
KEY, OTHER_KEY = "browser-test-key", "other-origin-key"


def chromium() -> str | None:
    return os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")


class PageServer:
    """Serves the page and receives the page's JSON report, on loopback."""

    def __init__(self):
        self.report = None
        self.received = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def do_POST(self):
                outer.report = json.loads(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(204)
                self.end_headers()
                outer.received.set()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def run():
    binary = chromium()
    if binary is None:
        pytest.fail("chromium is not installed: scripts/setup.sh --browser installs it")
    page = PageServer()
    config = {
        "keys": [
            {"id": "browser", "sha256": sha256_hex(KEY), "cors": {"allowed_origins": [page.origin]},
             "resources": ["stream-7f3a"]},
            {"id": "elsewhere", "sha256": sha256_hex(OTHER_KEY),
             "cors": {"allowed_origins": ["https://somewhere-else.example"]}},
        ],
        "cors_endpoints": c.CORS_ENDPOINTS,
        "public_endpoints": [{"methods": ["GET"], "paths": ["/healthz"]}],
    }
    from support.harness import Envoy

    envoy = Envoy(plugin_config=config).start()
    profile = tempfile.mkdtemp(prefix="keygate-chromium-")
    url = f"{page.origin}/?api=http://127.0.0.1:{envoy.port}&key={KEY}&other_key={OTHER_KEY}"
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert page.received.wait(60), "the page never reported: chromium did not run the script"
        yield {r["name"]: r for r in page.report}, envoy
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        envoy.stop()
        page.close()
        shutil.rmtree(profile, ignore_errors=True)


def test_allowed_key_reads_the_upstream_answer_after_real_preflights(run):
    results, envoy = run
    get, patch = results["allowed_get"], results["allowed_patch"]
    assert get["fetched"] and get["status"] == 200, get
    seen = json.loads(get["body"])["headers"]
    assert ["x-api-key-id", "browser"] in seen
    assert patch["fetched"] and patch["status"] == 200, patch
    seen = json.loads(patch["body"])["headers"]
    assert [":method", "PATCH"] in seen and ["x-api-key-id", "browser"] in seen
    # The browser asked keygate first: GET with Authorization and PATCH both need a preflight.
    envoy.wait_counter("preflight_allowed", 2, at_least=True)


def test_resource_outside_scope_is_a_readable_403(run):
    r = run[0]["resource_outside_scope"]
    assert r["fetched"] and r["status"] == 403, r
    assert r["body"].encode() == forbidden("Resource not allowed for this API key")


def test_endpoint_outside_allowlist_fails_at_the_preflight(run):
    results, envoy = run
    r = results["endpoint_outside_allowlist"]
    assert not r["fetched"] and r["error"].startswith("TypeError"), r
    envoy.wait_counter("preflight_denied", 1, at_least=True)
    assert envoy.counter("denied_endpoint") == 0  # the DELETE itself was never sent


def test_key_for_another_origin_is_a_cors_error(run):
    results, envoy = run
    r = results["key_for_another_origin"]
    assert not r["fetched"] and r["error"].startswith("TypeError"), r
    envoy.wait_counter("denied_origin", 1)  # sent, refused, and unreadable to the page


def test_unknown_key_401_is_readable(run):
    r = run[0]["unknown_key"]
    assert r["fetched"] and r["status"] == 401, r
    assert r["body"].encode() == UNAUTHORIZED
