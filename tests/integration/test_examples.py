"""The deployment examples: no container engine runs here, so each is checked as far as a
machine without one can: parsed, every mounted file present, images pinned, the Envoy
configs validated by the real Envoy, and every keygate configuration checked by the CLI."""

import subprocess
from pathlib import Path

import pytest
import yaml

from support.harness import ROOT, envoy_command

COMPOSE = ROOT / "examples" / "docker-compose" / "compose.yaml"


def keygate_cli() -> Path:
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "keygate-tools", "--bin", "keygate"], cwd=ROOT, check=True, timeout=600
    )
    return ROOT / "target" / "debug" / "keygate"


def mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) for each bind mount, host paths resolved from the compose dir."""
    out = []
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if not host.startswith((".", "/")):
            continue  # a named volume, not a host path
        out.append(((COMPOSE.parent / host).resolve(), container))
    return out


def test_compose_file_parses_and_pins_its_images():
    doc = yaml.safe_load(COMPOSE.read_text())
    assert set(doc["services"]) == {"envoy", "echo", "site", "keygate-keys"}
    for name, service in doc["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"
    assert doc["services"]["envoy"]["image"] == "envoyproxy/envoy:v1.40.0"  # the version tests run


def test_every_mounted_path_exists():
    doc = yaml.safe_load(COMPOSE.read_text())
    for name, service in doc["services"].items():
        for host, container in mounts(service):
            assert host.exists(), f"{name}: {host} (mounted at {container}) is missing; run ./wasm-build.sh"


@pytest.mark.parametrize("service", ["envoy", "echo"])
def test_envoy_validates_the_config_each_container_runs(service, tmp_path):
    svc = yaml.safe_load(COMPOSE.read_text())["services"][service]
    config_path = svc["command"][svc["command"].index("-c") + 1]
    host_of = {container: host for host, container in mounts(svc)}
    text = host_of[config_path].read_text()
    # The container sees its mounts at other paths: point them at the files they mount.
    for container, host in host_of.items():
        text = text.replace(container, str(host))
    local = tmp_path / "envoy.yaml"
    local.write_text(text)
    r = subprocess.run(envoy_command() + ["--mode", "validate", "-c", str(local)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout + r.stderr


@pytest.mark.parametrize("example,place", [
    ("examples/istio/wasmplugin.yaml", "WasmPlugin keygate: "),
    ("examples/envoy-gateway/envoyextensionpolicy.yaml", "EnvoyExtensionPolicy keygate wasm[0]: "),
    ("examples/docker-compose/envoy.yaml", "wasm filter keygate: "),
    ("envoy/envoy.yaml", "wasm filter keygate: "),
    ("envoy/ecds/keygate.yaml", "wasm filter keygate: "),
    ("envoy/envoy-ratelimit.yaml", "wasm filter keygate: "),
])
def test_keygate_check_accepts_every_shipped_configuration(example, place):
    r = subprocess.run([str(keygate_cli()), "check", example], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{example}: {place}valid: ")
    assert r.stderr == ""  # no plaintext keys in anything we ship


def test_istio_plugin_is_authn_phase_and_fails_closed():
    spec = yaml.safe_load((ROOT / "examples/istio/wasmplugin.yaml").read_text())["spec"]
    assert (spec["phase"], spec["failStrategy"], spec["pluginName"]) == ("AUTHN", "FAIL_CLOSE", "keygate")
    wasm = yaml.safe_load((ROOT / "examples/envoy-gateway/envoyextensionpolicy.yaml").read_text())["spec"]["wasm"][0]
    assert (wasm["rootID"], wasm["failOpen"]) == ("keygate", False)


def test_the_key_service_is_wired_the_same_way_everywhere():
    doc = yaml.safe_load(COMPOSE.read_text())
    svc = doc["services"]["keygate-keys"]
    dockerfile = (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
    assert dockerfile.exists() and "-p keygate-tools" in dockerfile.read_text()
    assert svc["command"][:3] == ["serve", "--db", "sqlite:/data/keygate.db"]
    assert "--filter-listen" in svc["command"] and "0.0.0.0:9101" in svc["command"]
    assert "--ratelimit-listen" in svc["command"] and "0.0.0.0:9102" in svc["command"]
    # Envoy in the stack reaches it by its service name on the filter port.
    compose_envoy = yaml.safe_load((COMPOSE.parent / "envoy.yaml").read_text())
    cluster = next(c for c in compose_envoy["static_resources"]["clusters"] if c["name"] == "keygate-keys")
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("keygate-keys", 9101)
    # Istio: the WasmPlugin names the Service's outbound cluster and authority.
    docs = list(yaml.safe_load_all((ROOT / "examples/istio/keyservice.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Namespace", "Secret", "Deployment", "Service", "DestinationRule",
                          "PeerAuthentication", "AuthorizationPolicy", "NetworkPolicy"}
    service, deploy = kinds["Service"], kinds["Deployment"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    # A dead replica leaves the rotation on failed lookups (an http_call has no retries).
    rule = kinds["DestinationRule"]["spec"]
    assert rule["host"] == host
    assert rule["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] <= 5
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http-filter")
    plugin = yaml.safe_load((ROOT / "examples/istio/wasmplugin.yaml").read_text())["spec"]["pluginConfig"]
    assert plugin["key_service"]["cluster"] == f"outbound|{port}||{host}"
    assert plugin["key_service"]["authority"] == host
    assert deploy["spec"]["replicas"] >= 2
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "serve" and "0.0.0.0:9101" in args and "0.0.0.0:9102" in args
    # The gateway's rate-limit filter names the Service's gRPC port's outbound cluster.
    rl_port = next(p for p in service["spec"]["ports"] if p["name"].startswith("grpc-"))["port"]
    patches = yaml.safe_load((ROOT / "examples/istio/ratelimit.yaml").read_text())["spec"]["configPatches"]
    grpc = limited_only(patches[0]["patch"]["value"])["typed_config"]["rate_limit_service"]["grpc_service"][
        "envoy_grpc"]
    assert grpc["cluster_name"] == f"outbound|{rl_port}||{host}" and grpc["authority"] == host
    assert deploy["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_istio_lets_only_the_gateway_reach_the_filter_listener():
    """The filter listener answers any caller with every key's entry: under Istio, mutual TLS is
    required, only the gateway's principal may call it (GETs of the filter API only; the
    rate-limit listener, its one gRPC method), and the
    admin listener is open to the gateway and the service's namespace alone."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "examples/istio/keyservice.yaml").read_text())}
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    gateway = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    peer = docs["PeerAuthentication"]["spec"]
    assert peer["mtls"]["mode"] == "STRICT" and peer["selector"]["matchLabels"] == labels
    policy = docs["AuthorizationPolicy"]["spec"]
    assert policy["action"] == "ALLOW" and policy["selector"]["matchLabels"] == labels
    by_port: dict[str, list] = {}
    for rule in policy["rules"]:
        for op in rule["to"]:
            for port in op["operation"]["ports"]:
                by_port.setdefault(port, []).append((rule["from"], op["operation"]))
    assert set(by_port) == {"9101", "9102", "9100"}
    [(sources, op)] = by_port["9101"]
    assert sources == [{"source": {"principals": [gateway]}}]
    assert op["methods"] == ["GET"] and op["paths"] == ["/v1/filter/*"]
    # The rate-limit listener: the gateway's one gRPC method only.
    [(sources, op)] = by_port["9102"]
    assert sources == [{"source": {"principals": [gateway]}}]
    assert op["methods"] == ["POST"]
    assert op["paths"] == ["/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"]
    [(sources, _)] = by_port["9100"]
    assert sources == [{"source": {"principals": [gateway]}}, {"source": {"namespaces": ["keygate"]}}]
    net = docs["NetworkPolicy"]["spec"]
    assert net["podSelector"]["matchLabels"] == labels and net["policyTypes"] == ["Ingress"]
    filter_from = [r["from"] for r in net["ingress"] if {"port": 9101} in r["ports"]]
    assert filter_from == [[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
                             "podSelector": {"matchLabels": {"istio": "ingressgateway"}}}]]


def test_every_shipped_key_service_cluster_closes_idle_connections_before_the_service():
    """A lookup is an http_call with no retry: a cluster must drop an idle connection before
    `keygate serve` does (its idle timeout is 60 s by default), never send on one it is closing."""
    seconds = {}
    for path in ("envoy/envoy.yaml", "examples/docker-compose/envoy.yaml", "envoy/keyservice-mtls.yaml"):
        clusters = yaml.safe_load((ROOT / path).read_text())["static_resources"]["clusters"]
        for c in clusters:
            if c["name"] == "keygate-keys":
                opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                seconds[path] = float(opts["common_http_protocol_options"]["idle_timeout"].rstrip("s"))
    rule = next(d for d in yaml.safe_load_all((ROOT / "examples/istio/keyservice.yaml").read_text())
                if d["kind"] == "DestinationRule")
    seconds["istio"] = float(rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"].rstrip("s"))
    assert len(seconds) == 4 and all(0 < s < 60 for s in seconds.values()), seconds


def limited_only(wrapper: dict) -> dict:
    """The rate-limit filter inside the composite filter that makes it only for requests with
    x-api-key-limits; the wrapper around it must be envoy/envoy.yaml's own."""
    shipped = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    filters = shipped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"]
    ours = next(f for f in filters if f["name"] == wrapper["name"])["typed_config"]
    theirs = wrapper["typed_config"]
    assert theirs["extension_config"] == ours["extension_config"]
    matcher, our_matcher = theirs["xds_matcher"]["matcher_list"], ours["xds_matcher"]["matcher_list"]
    assert [m["predicate"] for m in matcher["matchers"]] == [m["predicate"] for m in our_matcher["matchers"]]
    assert theirs["xds_matcher"]["on_no_match"] == ours["xds_matcher"]["on_no_match"]
    return matcher["matchers"][0]["on_match"]["action"]["typed_config"]["typed_config"]


def ratelimit_parts(example: str) -> tuple[dict, list, list]:
    """The rate-limit filter, the route's rate_limits and any clusters an example adds."""
    doc = yaml.safe_load((ROOT / example).read_text())
    if doc["kind"] == "EnvoyFilter":
        patches = doc["spec"]["configPatches"]
        by = {p["applyTo"]: p["patch"]["value"] for p in patches}
        return by["HTTP_FILTER"], by["VIRTUAL_HOST"]["rate_limits"], []
    ops = {p["type"].rsplit(".", 1)[1]: p["operation"]["value"] for p in doc["spec"]["jsonPatches"]}
    return ops["Listener"], ops["RouteConfiguration"], [ops["Cluster"]]


@pytest.mark.parametrize("example", ["examples/istio/ratelimit.yaml", "examples/envoy-gateway/ratelimit.yaml"])
def test_the_rate_limit_examples_are_configurations_envoy_accepts(example, tmp_path):
    """Each example's filter, descriptor and cluster, placed after keygate in a real bootstrap,
    pass `envoy --mode validate`; the descriptor is the one envoy/envoy.yaml ships."""
    from support.harness import ROUTER, free_port, hcm, http_filter_wasm, listener, static_cluster

    rl_filter, rate_limits, clusters = ratelimit_parts(example)
    shipped = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    route = shipped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert rate_limits == route["rate_limits"]
    grpc = limited_only(rl_filter)["typed_config"]["rate_limit_service"]["grpc_service"]["envoy_grpc"][
        "cluster_name"]
    if not clusters:  # Istio makes the Service's outbound cluster itself
        clusters = [static_cluster(grpc, free_port(), http2=True)]
    assert any(c["name"] == grpc for c in clusters)
    plugin = {"keys": [], "key_service": {"cluster": "keygate-keys"}}
    api = hcm("api", [http_filter_wasm(plugin), rl_filter, ROUTER],
              [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}])
    api["typed_config"]["route_config"]["virtual_hosts"][0]["rate_limits"] = rate_limits
    for c in clusters:
        c["type"] = "STATIC"
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "address"] = "127.0.0.1"
    bootstrap = {"inline_headers": shipped["inline_headers"], "static_resources": {
        "listeners": [listener("api", free_port(), api)],
        "clusters": [static_cluster("echo", free_port()), static_cluster("keygate-keys", free_port())] + clusters}}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    r = subprocess.run(envoy_command() + ["--mode", "validate", "-c", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
