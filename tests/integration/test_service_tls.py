"""The filter listener over TLS, with client certificates (`--filter-tls-cert`,
`--filter-tls-key`, `--filter-client-ca`), with certificates the test makes: a client
without a certificate, or with one from another authority, is refused in the handshake;
one with a certificate from the CA looks keys up. Then the shipped
`envoy/keyservice-mtls.yaml`, validated by the real Envoy and run: keygate in Envoy looks a
key up through that mutual-TLS cluster and lets the request through."""
from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.harness import ROOT, Envoy, bearer, echo_listener, envoy_command, free_port
from support.service import Service, sha256_hex

EXAMPLE = ROOT / "envoy" / "keyservice-mtls.yaml"
NAME = "keygate-keys.internal"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def authority(cwd: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=cwd)


def leaf(cwd: Path, name: str, ca: str, ext: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    authority(d, "ca")
    authority(d, "other")
    leaf(d, "keyservice", "ca", f"subjectAltName=DNS:{NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    leaf(d, "envoy-client", "ca", "extendedKeyUsage=clientAuth\n")
    leaf(d, "stranger", "other", "extendedKeyUsage=clientAuth\n")
    return d


def tls_args(d: Path, client_ca: bool = True) -> list[str]:
    args = ["--filter-tls-cert", str(d / "keyservice.pem"), "--filter-tls-key", str(d / "keyservice.key")]
    return args + (["--filter-client-ca", str(d / "ca.pem")] if client_ca else [])


def lookup(port: int, d: Path, client: str | None, path: str) -> int:
    """A lookup over TLS, as `client` (a certificate's name in `d`) or with none."""
    context = ssl.create_default_context(cafile=str(d / "ca.pem"))
    if client:
        context.load_cert_chain(str(d / f"{client}.pem"), str(d / f"{client}.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture
def service(services):
    """service(*args): `keygate serve` with these extra arguments (see conftest's services)."""
    return lambda *args: services(args=args)


def test_client_certificates_are_required_and_checked(certs, service):
    s = service(*tls_args(certs))
    assert f"filter https://127.0.0.1:{s.filter_port}," in s.lines[0], s.lines[0]
    key, _ = s.create({"owner": "o"})  # the admin listener stays plain HTTP
    path = f"/v1/filter/keys/{sha256_hex(key)}"
    assert lookup(s.filter_port, certs, "envoy-client", path) == 200
    for client in (None, "stranger"):
        with pytest.raises((OSError, http.client.HTTPException)):
            lookup(s.filter_port, certs, client, path)
    # Plain HTTP on the TLS listener gets no answer either.
    with pytest.raises((OSError, http.client.HTTPException)):
        s.filter(path)


def test_a_stalled_handshake_is_closed_after_the_header_timeout(certs, service):
    s = service(*tls_args(certs), "--header-timeout-ms", "1000")
    with socket.create_connection(("127.0.0.1", s.filter_port), timeout=5) as c:
        c.sendall(b"\x16\x03\x01")  # the start of a ClientHello, never finished
        start = time.monotonic()
        assert c.recv(1) == b""
        assert 0.8 < time.monotonic() - start < 2.5


def test_tls_without_client_ca_encrypts_without_client_certificates(certs, service):
    s = service(*tls_args(certs, client_ca=False))
    assert lookup(s.filter_port, certs, None, "/v1/filter/changes") == 200


@pytest.mark.parametrize("args,message", [
    (["--filter-client-ca", "ca.pem"], "--filter-tls-cert"),
    (["--filter-tls-cert", "keyservice.pem", "--filter-tls-key", "other.key"], "--filter-tls-cert"),
    (["--filter-tls-cert", "keyservice.pem", "--filter-tls-key", "missing.key"], "missing.key"),
])
def test_bad_tls_options_stop_the_start(certs, tmp_path, args, message):
    args = [str(certs / a) if a.endswith((".pem", ".key")) else a for a in args]
    s = Service("sqlite:keygate.db", tmp_path, args=args)
    with pytest.raises(RuntimeError, match=message):
        s.start()


def example(certs: Path, service: Service | None = None) -> tuple[dict, str]:
    """The shipped example with the test's certificates, module and ports."""
    text = EXAMPLE.read_text().replace("/etc/keygate/tls/", f"{certs}/")
    text = text.replace("filename: dist/keygate.wasm", f"filename: {ROOT / 'dist' / 'keygate.wasm'}")
    config = yaml.safe_load(text)
    if service:
        keys = config["static_resources"]["clusters"][1]
        keys["type"] = "STATIC"
        address = keys["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        address["socket_address"] = {"address": "127.0.0.1", "port_value": service.filter_port}
    return config, text


def test_envoy_validates_the_mtls_example(certs, tmp_path):
    _, text = example(certs)
    local = tmp_path / "envoy.yaml"
    local.write_text(text)
    r = subprocess.run(envoy_command() + ["--mode", "validate", "-c", str(local)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout + r.stderr


def test_keygate_in_envoy_looks_keys_up_over_mutual_tls(certs, tmp_path):
    s = Service("sqlite:keygate.db", tmp_path)
    # The filter's calls carry the example's authority; the test's admin calls its own.
    s.args = [*tls_args(certs), "--allowed-hosts", f"{NAME},127.0.0.1:{s.admin_port}"]
    s.start()
    key, _ = s.create({"owner": "o"})
    config, _ = example(certs, s)
    envoy = Envoy()
    echo_port = free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = envoy.admin_port
    listeners = config["static_resources"]["listeners"]
    listeners[0]["address"]["socket_address"]["port_value"] = envoy.port
    listeners.append(echo_listener(echo_port))
    upstream = config["static_resources"]["clusters"][0]
    upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "port_value"] = echo_port
    envoy.bootstrap = config
    envoy.start()
    try:
        ok = envoy.get("/api/x", headers=[bearer(key)])
        assert ok.status == 200, (ok.status, ok.body, envoy.log()[-2000:])
        assert envoy.get("/api/x", headers=[bearer("kg_not_a_key")]).status == 401
    finally:
        envoy.stop()
        s.stop()
