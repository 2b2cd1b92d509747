"""Autoscaling: base keeps CPU HorizontalPodAutoscalers (what works everywhere);
components/autoscaling-keda and components/autoscaling-prometheus-adapter scale
synth on its own load (rows generating + requests waiting) and the gateway on
HTTP requests in flight, with CPU kept beside them, within the bounds the
overlay sets. The metric names they read are checked against the running mesh
in tests/gateway/test_operations_metrics.py."""

from __future__ import annotations

import re

import pytest

from services.synth import config as synth_config
from tests.deploy import monitoring
from tests.deploy.test_agreement import value_in
from tests.deploy.test_schema import validation_errors

SCALED = ("synth", "gateway")


def bounds(hpa: dict) -> tuple[int, int]:
    return hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]


def synth_batch(rendering, code) -> int:
    synth = rendering.workload("Deployment", "synth").container
    return int(value_in(rendering, code, synth, synth_config.SYNTH_MAX_BATCH_SIZE.name))


def test_base_scales_on_cpu_where_nothing_else_exists(rendering):
    for name in SCALED:
        hpa = rendering.get("HorizontalPodAutoscaler", name)
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert not rendering.of_kind("ScaledObject")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_keda_replaces_the_cpu_autoscalers_within_the_same_bounds(rendered, rendered_with, overlay):
    plain = rendered(overlay)
    rendering = rendered_with(overlay, "monitoring", "autoscaling-keda")
    assert validation_errors(rendering.objects) == []
    assert not rendering.of_kind("HorizontalPodAutoscaler"), "KEDA's HPA and base's would fight"
    for name in SCALED:
        scaled = rendering.get("ScaledObject", name)
        assert scaled["spec"]["scaleTargetRef"]["name"] == name
        assert rendering.get("Deployment", name) is not None
        spec = scaled["spec"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == bounds(
            plain.get("HorizontalPodAutoscaler", name)
        ), f"{overlay}: {name}"
        types = [trigger["type"] for trigger in spec["triggers"]]
        assert "prometheus" in types and "cpu" in types, f"{name}: {types}"


def test_keda_scales_synth_on_its_load_a_full_batch_per_provider(rendered_with, code):
    rendering = rendered_with("prod", "autoscaling-keda")
    for name, metrics in (("synth", {"synth_rows_active", "synth_queue_depth"}), ("gateway", {"http_requests_in_flight"})):
        (trigger,) = [t for t in rendering.get("ScaledObject", name)["spec"]["triggers"] if t["type"] == "prometheus"]
        query = trigger["metadata"]["query"]
        assert monitoring.metric_names(query) == metrics
        # The query counts this overlay's pods, not another namespace's.
        assert set(re.findall(r'namespace="([^"]+)"', query)) == {rendering.namespace}
        assert trigger["metricType"] == "AverageValue"
    (synth_trigger,) = [
        t for t in rendering.get("ScaledObject", "synth")["spec"]["triggers"] if t["type"] == "prometheus"
    ]
    assert int(synth_trigger["metadata"]["threshold"]) == synth_batch(rendering, code)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_adapter_component_adds_load_metrics_and_keeps_cpu(rendered, rendered_with, overlay, code):
    plain = rendered(overlay)
    rendering = rendered_with(overlay, "autoscaling-prometheus-adapter")
    assert validation_errors(rendering.objects) == []
    published = {rule["name"]["as"] for rule in monitoring.adapter_rules()}
    for name in SCALED:
        hpa = rendering.get("HorizontalPodAutoscaler", name)
        assert bounds(hpa) == bounds(plain.get("HorizontalPodAutoscaler", name))
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        assert kinds == {"Pods", "Resource"}, f"{name}: {kinds}"
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in published, "the adapter publishes no such metric"
                if name == "synth":
                    assert int(metric["pods"]["target"]["averageValue"]) == synth_batch(rendering, code)


def test_the_adapter_rules_read_per_pod_series():
    for rule in monitoring.adapter_rules():
        overrides = rule["resources"]["overrides"]
        assert overrides["pod"] == {"resource": "pod"} and overrides["namespace"] == {"resource": "namespace"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
