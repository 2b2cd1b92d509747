"""components/tracing: an OpenTelemetry Collector beside the mesh, and every service pointed at it
with the OpenTelemetry SDK's own variables (runtime/tracing.py reads them); the network policies
let the spans through, and the collector is a pod as hardened as the mesh's."""

from __future__ import annotations

import os

import pytest
import yaml

from runtime import tracing
from tests.deploy.manifests import K8S, OVERLAYS
from tests.deploy.test_agreement import service_deployments
from tests.deploy.test_network_policies import STRANGER, Cluster
from tests.deploy.test_pods import effective
from tests.deploy.test_schema import validation_errors

COMPONENT = K8S / "components" / "tracing"


@pytest.fixture(scope="module", params=OVERLAYS)
def traced(request, rendered_with):
    return rendered_with(request.param, "tracing")


def test_the_component_renders_valid_objects(traced):
    assert validation_errors(traced.objects) == []


def test_every_service_sends_its_spans_to_the_collector(traced, monkeypatch):
    service = traced.get("Service", "otel-collector")
    (http,) = [port for port in service["spec"]["ports"] if port["name"] == "otlp-http"]
    collector = traced.workload("Deployment", "otel-collector")
    cluster = Cluster(traced)
    for name, deployment in service_deployments(traced).items():
        environment = {key: variable.value for key, variable in traced.environment(deployment.container).items()}
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{http['port']}", name
        # With what the container gets, the service's own code turns tracing on.
        for key in [key for key in os.environ if key.startswith("OTEL_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            if key.startswith("OTEL_"):
                monkeypatch.setenv(key, value)
        assert tracing.wanted(), name
        assert cluster.allows(cluster.endpoint(deployment), cluster.endpoint(collector), 4318), name
    assert not cluster.allows(STRANGER, cluster.endpoint(collector), 4318)


def test_the_collector_is_hardened_like_the_mesh(traced):
    workload = traced.workload("Deployment", "otel-collector")
    (container,) = workload.containers
    assert effective(workload, container, "runAsNonRoot") is True
    assert effective(workload, container, "allowPrivilegeEscalation") is False
    assert effective(workload, container, "readOnlyRootFilesystem") is True
    assert "ALL" in effective(workload, container, "capabilities")["drop"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert traced.get("ServiceAccount", "otel-collector")["automountServiceAccountToken"] is False


def test_the_collector_receives_otlp_http_and_sends_on_its_traces():
    config = yaml.safe_load((COMPONENT / "collector-config.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    (pipeline,) = config["service"]["pipelines"].values()
    assert pipeline["receivers"] == ["otlp"] and "batch" in pipeline["processors"]
    assert all(exporter in config["exporters"] for exporter in pipeline["exporters"])
