"""Monitoring (deploy/k8s/components/monitoring and the pods' scrape annotations):
the alert rules are valid for Prometheus (`promtool check rules`) and fire when
they should (`promtool test rules`), the PrometheusRule carries the same rules,
every alert has a runbook in the README, the dashboard's queries are valid
PromQL, and the component renders into valid objects that scrape every service.
That each metric these read exists: tests/gateway/test_operations_metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from runtime import config
from tests.deploy import monitoring
from tests.deploy.manifests import K8S, OVERLAYS, ROOT
from tests.deploy.test_agreement import service_deployments
from tests.deploy.test_schema import validation_errors

README = K8S / "README.md"
RULE_TESTS = ROOT / "tests" / "deploy" / "alert-rules.test.yaml"
# What the issue asks the alerts to cover, by the names they have.
REQUIRED_ALERTS = {
    "VoicemeshNoProviderOnline",
    "VoicemeshHighErrorRatio",
    "VoicemeshSynthQueueSaturated",
    "VoicemeshReadinessFailing",
    "VoicemeshDatabaseUnavailable",
}
# And what the dashboard must show, by a metric each.
DASHBOARD_SUBJECTS = {
    "requests by route": "http_requests_total",
    "errors by route and type": "http_errors_total",
    "generation latency": "gateway_generation_seconds_bucket",
    "audio seconds per second": "gateway_generated_audio_seconds_total",
    "real-time factor": "gateway_generation_real_time_factor_bucket",
    "synth batch size": "synth_batch_size_bucket",
    "synth queue depth": "synth_queue_depth",
    "synth rows active": "synth_rows_active",
    "providers online": "gateway_providers_online",
    "STT queue": "stt_queue_depth",
    "PostgreSQL pool use": "database_pool_connections",
    "429s by reason": "http_errors_total",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (`make test` installs Debian's prometheus package)")
    return found


def run_promtool(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *arguments], capture_output=True, text=True, timeout=60)


# --- the rules ---------------------------------------------------------------


def test_the_prometheus_rule_carries_the_plain_rules_file():
    (rule,) = list(yaml.safe_load_all(monitoring.PROMETHEUS_RULE.read_text()))
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == monitoring.alert_rules()


def test_the_rules_pass_promtool_check_rules(tmp_path):
    (rule,) = list(yaml.safe_load_all(monitoring.PROMETHEUS_RULE.read_text()))
    operator_rules = tmp_path / "prometheus-rule-spec.yaml"
    operator_rules.write_text(yaml.safe_dump(rule["spec"]))
    for path in (monitoring.ALERT_RULES, operator_rules):
        result = run_promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_refuses_a_broken_rule(tmp_path):
    """The check above can fail: an expression that does not parse is an error."""
    broken = monitoring.alert_rules()
    broken["groups"][0]["rules"][0]["expr"] = "max by (namespace (gateway_providers_online) == 0"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert run_promtool("check", "rules", str(path)).returncode != 0


def test_each_alert_fires_when_it_should_and_only_then():
    """tests/deploy/alert-rules.test.yaml: series that mean trouble, and healthy ones."""
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    alerts = {rule["alert"] for group in monitoring.alert_rules()["groups"] for rule in group["rules"]}
    assert tested == alerts, f"alerts without a promtool test: {sorted(alerts - tested)}"
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_and_a_runbook_in_the_readme():
    readme = README.read_text()
    alerts_section = readme.split("## Alerts", 1)[1].split("\n## ", 1)[0]
    rules = [rule for group in monitoring.alert_rules()["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["runbook"] == f"deploy/k8s/README.md#alerts: {rule['alert']}"
        assert re.search(rf"^- \*\*{rule['alert']}\*\*", alerts_section, re.MULTILINE), (
            f"README.md, Alerts: no runbook line for {rule['alert']}"
        )


# --- the dashboard -----------------------------------------------------------


def test_every_query_is_valid_promql(tmp_path):
    """Dashboard, KEDA and adapter queries, checked by promtool as recording rules."""
    queries = {**monitoring.dashboard_queries(), **monitoring.keda_queries(), **monitoring.adapter_queries()}
    rules = [{"record": f"voicemesh:query_{index}", "expr": expr} for index, expr in enumerate(queries.values())]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    if result.returncode != 0:
        wrong = [where for where, expr in queries.items() if expr in result.stdout + result.stderr]
        pytest.fail(f"{wrong or 'a query'} is not valid PromQL:\n{result.stdout}{result.stderr}")


def test_the_dashboard_shows_what_an_operator_looks_for():
    used = monitoring.metrics_used()
    dashboard_used = {name for name, where in used.items() if any(w.startswith("dashboard") for w in where)}
    missing = {subject for subject, metric in DASHBOARD_SUBJECTS.items() if metric not in dashboard_used}
    assert not missing, f"the dashboard shows nothing of {sorted(missing)}"


def test_the_dashboard_is_a_grafana_dashboard_that_imports_anywhere():
    board = monitoring.dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = monitoring.dashboard_panels(board)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        # No data source of the author's Grafana: the one picked on import.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'namespace=~"$namespace"' in target["expr"], f"{panel['title']}: not filtered by namespace"


def test_metric_names_are_read_out_of_promql():
    names = monitoring.metric_names(
        'histogram_quantile(0.9, sum by (le, route) (rate(a_bucket{route=~"x{1}", s!="b"}[5m])))'
        " / on (pod) group_left (node) b_total offset 5m + vector(0) or c > bool 1"
    )
    assert names == {"a_bucket", "b_total", "c"}


# --- the component, rendered -------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_monitoring_component_renders_valid_objects(rendered_with, overlay):
    rendering = rendered_with(overlay, "monitoring")
    assert validation_errors(rendering.objects) == []
    (pod_monitor,) = rendering.of_kind("PodMonitor")
    (rule,) = rendering.of_kind("PrometheusRule")
    assert pod_monitor["metadata"]["namespace"] == rule["metadata"]["namespace"] == rendering.namespace
    assert rule["spec"] == monitoring.alert_rules()
    dashboard = rendering.get("ConfigMap", "voicemesh-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["voicemesh.json"]) == monitoring.dashboard()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_monitor_scrapes_every_service_on_its_metrics_port(rendered_with, overlay):
    rendering = rendered_with(overlay, "monitoring")
    (pod_monitor,) = rendering.of_kind("PodMonitor")
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    for service, deployment in service_deployments(rendering).items():
        assert selector.items() <= deployment.pod_labels.items(), f"{overlay}: the PodMonitor misses {service}"
        assert deployment.ports().get(endpoint["port"]) == config.SERVICES[service].metrics_port.default


def test_a_typo_in_a_custom_resource_is_caught(rendered_with):
    """The CRD schemas hold custom resources as strictly as Kubernetes' own kinds."""
    rendering = rendered_with("prod", "monitoring")
    pod_monitor = json.loads(json.dumps(rendering.of_kind("PodMonitor")[0]))
    pod_monitor["spec"]["podMetricsEndpoint"] = pod_monitor["spec"].pop("podMetricsEndpoints")
    rule = json.loads(json.dumps(rendering.of_kind("PrometheusRule")[0]))
    rule["spec"]["groups"][0]["rules"][0]["fore"] = "2m"
    errors = validation_errors([pod_monitor, rule])
    assert any(e.startswith("PodMonitor/voicemesh") and "podMetricsEndpoint" in e for e in errors), errors
    assert any(e.startswith("PrometheusRule/voicemesh") and "fore" in e for e in errors), errors


def test_without_the_component_pods_carry_scrape_annotations(rendering):
    for service, deployment in service_deployments(rendering).items():
        annotations = deployment.obj["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", f"{rendering.overlay}: {service}"
        assert annotations.get("prometheus.io/path") == "/metrics"
        assert int(annotations["prometheus.io/port"]) == deployment.ports()["metrics"]
