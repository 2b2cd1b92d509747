"""The public API's way in (base/ingress.yaml and the overlays' hosts): the
gateway's HTTP port over TLS on GATEWAY_PUBLIC_URL's host, with the proxy's
body limit and timeouts above the gateway's own (a long generation is not cut,
a too-large body gets the gateway's JSON 413), and nothing else of the mesh
reachable through it: the gRPC port stays for internal clients, which opt in
with a label."""

from __future__ import annotations

import re
import urllib.parse

from runtime import config
from services.gateway.edge import config as edge_config
from tests.deploy.manifests import ROOT
from tests.deploy.netpol import Endpoint, namespace_labels
from tests.deploy.test_agreement import value_in
from tests.deploy.test_network_policies import STRANGER, Cluster

NGINX = "nginx.ingress.kubernetes.io/"
# ingress-nginx's controller pods, as its manifests label them.
INGRESS_CONTROLLER = Endpoint(
    "ingress-nginx", namespace_labels("ingress-nginx"), {"app.kubernetes.io/name": "ingress-nginx"}
)
_SIZE = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)
_DEADLINE_LIMIT = re.compile(r'deadline_limit:\s*"(\w+)"')


def size_bytes(nginx_size: str) -> int:
    """nginx's size syntax: 32m -> 33554432."""
    number, unit = _SIZE.match(nginx_size).groups()
    return int(number) * 1024 ** "bkmg".index(unit.lower() or "b")


# The gateway's dialects of the generation API have proto packages of their own.
DIALECTS_SERVED_BY = {"openai": "gateway", "predictor": "gateway"}


def longest_route_seconds(rendering, code) -> float:
    """The longest deadline the gateway gives a call of an HTTP route: its ordinary one plus the
    largest limit a route names (deadline_limit in protos/), as the service owning the route
    publishes it: the setting behind the limit, as that service's container sees it. A route of
    protos/voice/<service>/ is served by <service>, and the dialects' (protos/voice/openai/,
    protos/voice/predictor/) by the gateway."""
    gateway = rendering.workload("Deployment", "gateway").container
    deadlines = []
    for path in (ROOT / "protos" / "voice").rglob("*.proto"):
        package = path.relative_to(ROOT / "protos" / "voice").parts[0]
        service = DIALECTS_SERVED_BY.get(package, package)
        for limit in _DEADLINE_LIMIT.findall(path.read_text()):
            setting = code.limits.get(service, {}).get(limit)
            assert setting, f"{path.name} names the deadline limit {limit!r}, which {service} does not publish"
            container = rendering.workload("Deployment", service).container
            deadlines.append(float(value_in(rendering, code, container, setting)))
    assert deadlines, "no route names a deadline limit: the reading of protos/ is broken"
    return max(deadlines) + float(value_in(rendering, code, gateway, config.UPSTREAM_TIMEOUT_SECONDS.name))


def gateway_ingress(rendering) -> dict:
    (ingress,) = rendering.of_kind("Ingress")
    return ingress


def test_only_the_gateways_http_port_is_exposed(rendering):
    ingress = gateway_ingress(rendering)
    service = rendering.get("Service", "gateway")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "the gRPC port would leave the cluster"
    http_port = {port["name"]: port for port in service["spec"]["ports"]}["http"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "gateway"
            assert backend["port"].get("name") == "http" or backend["port"].get("number") == http_port["port"]


def test_the_host_is_the_public_url_and_served_over_tls(rendering, code):
    ingress = gateway_ingress(rendering)
    gateway = rendering.workload("Deployment", "gateway").container
    public_url = urllib.parse.urlsplit(value_in(rendering, code, gateway, "GATEWAY_PUBLIC_URL"))
    assert public_url.scheme == "https", f"{rendering.overlay}: share URLs would not be https"
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts == {public_url.hostname}, f"{rendering.overlay}: Ingress {hosts}, GATEWAY_PUBLIC_URL {public_url}"
    covered = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    assert hosts <= covered
    assert all(tls.get("secretName") for tls in ingress["spec"]["tls"])


def test_prod_gets_its_certificate_from_cert_manager(rendered):
    annotations = gateway_ingress(rendered("prod"))["metadata"]["annotations"]
    assert annotations.get("cert-manager.io/cluster-issuer") or annotations.get("cert-manager.io/issuer")


def test_the_proxy_lets_the_gateway_enforce_the_body_limit(rendering, code):
    annotations = gateway_ingress(rendering)["metadata"]["annotations"]
    gateway = rendering.workload("Deployment", "gateway").container
    limit = int(value_in(rendering, code, gateway, edge_config.MAX_BODY_BYTES.name))
    proxy_limit = size_bytes(annotations[NGINX + "proxy-body-size"])
    # Above the gateway's limit (its 413 is JSON, nginx's is HTML), and not unbounded ("0").
    assert limit < proxy_limit <= 2 * limit, f"{rendering.overlay}: proxy {proxy_limit}, gateway {limit}"


def test_the_proxy_waits_for_the_longest_generation_and_streams(rendering, code):
    annotations = gateway_ingress(rendering)["metadata"]["annotations"]
    longest = longest_route_seconds(rendering, code)
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[NGINX + timeout]) > longest, f"{rendering.overlay}: {timeout} cuts a {longest} s call"
    assert annotations[NGINX + "proxy-buffering"] == "off"
    assert annotations[NGINX + "proxy-request-buffering"] == "off"


def test_the_controller_reaches_the_http_port_and_not_the_grpc_port(rendering):
    cluster = Cluster(rendering)
    gateway = rendering.workload("Deployment", "gateway")
    assert cluster.allows(INGRESS_CONTROLLER, cluster.endpoint(gateway), gateway.ports()["http"])
    assert not cluster.allows(INGRESS_CONTROLLER, cluster.endpoint(gateway), gateway.ports()["grpc"])


def test_internal_grpc_clients_opt_in_and_reach_the_gateway_alone(rendering):
    cluster = Cluster(rendering)
    client = Endpoint("billing", namespace_labels("billing"), {"voicemesh.io/grpc-client": "true"})
    gateway = rendering.workload("Deployment", "gateway")
    library = rendering.workload("Deployment", "library")
    assert cluster.allows(client, cluster.endpoint(gateway), gateway.ports()["grpc"])
    assert not cluster.allows(STRANGER, cluster.endpoint(gateway), gateway.ports()["grpc"])
    assert not cluster.allows(client, cluster.endpoint(library), library.ports()["grpc"])
