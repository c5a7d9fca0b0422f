"""The CLI reaches an admin API behind TLS: Envoy terminates HTTPS with a certificate from a
private authority the test makes, in front of the real key service. The CLI verifies the
server against `--ca`, and refuses a server it cannot verify before sending the token."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.harness import ROUTER, Envoy, free_port, hcm, static_cluster
from support.service import Service, run_keygate

TOKEN = "kg_admin_token_https"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def authority(cwd: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=cwd)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A service behind Envoy's HTTPS listener, and the folder with `ca.pem` and `other.pem`."""
    d = tmp_path_factory.mktemp("tls")
    authority(d, "ca")
    authority(d, "other")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    service = Service("sqlite:keygate.db", d, tokens=[TOKEN]).start()
    port = free_port()
    tls_socket = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"filename": str(d / "server.pem")},
            "private_key": {"filename": str(d / "server.key")}}]}}}
    envoy = Envoy()
    api = hcm("admin_tls", [ROUTER], [{"match": {"prefix": "/"}, "route": {"cluster": "admin"}}])
    envoy.bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": envoy.admin_port}}},
        "static_resources": {
            "listeners": [{"name": "admin_tls",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [api], "transport_socket": tls_socket}]}],
            "clusters": [static_cluster("admin", service.admin_port)],
        },
    }
    envoy.start()
    yield f"https://127.0.0.1:{port}", d
    envoy.stop()
    service.stop()


def keys(server: str, *args: str) -> subprocess.CompletedProcess:
    return run_keygate("keys", *args, "--server", server, env={"KEYGATE_ADMIN_TOKEN": TOKEN})


def test_the_cli_creates_and_lists_keys_over_https_verified_by_its_ca(tls):
    server, d = tls
    made = keys(server, "create", "--owner", "acme", "--json", "--ca", str(d / "ca.pem"))
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["entry"]["owner"] == "acme" and created["key"].startswith("kg_")
    listed = keys(server, "list", "--json", "--ca", str(d / "ca.pem"))
    assert listed.returncode == 0, listed.stderr
    assert created["entry"]["id"] in [e["id"] for e in json.loads(listed.stdout)["entries"]]
    assert "in clear" not in made.stderr + listed.stderr


@pytest.mark.parametrize("trust", ["system roots only", "another authority"])
def test_a_server_the_cli_cannot_verify_is_refused(tls, trust):
    server, d = tls
    extra = [] if trust == "system roots only" else ["--ca", str(d / "other.pem")]
    r = keys(server, "list", *extra)
    assert r.returncode == 1
    assert "UnknownIssuer" in r.stderr or "certificate" in r.stderr.lower(), r.stderr
    assert r.stdout == ""
