"""The PromQL of deploy/k8s that names our metrics: the Grafana dashboard, the
alert rules, the KEDA triggers and the Prometheus Adapter rules; and the
metric names each expression reads, for tests that hold them against what
the running services expose (tests/gateway/test_operations_metrics.py)."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.manifests import K8S

MONITORING = K8S / "components" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERT_RULES = MONITORING / "alert-rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheus-rule.yaml"
KEDA = K8S / "components" / "autoscaling-keda"
ADAPTER = K8S / "components" / "autoscaling-prometheus-adapter"
ADAPTER_RULES = ADAPTER / "adapter-rules.yaml"

# Grafana's variables, as PromQL can read them (for promtool and for name extraction).
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}
# The Prometheus Adapter's templates in a metricsQuery, filled in as it does for one pod.
ADAPTER_TEMPLATES = {
    "<<.LabelMatchers>>": 'namespace="voicemesh",pod="synth-0"',
    "<<.GroupBy>>": "pod",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan", "Inf", "NaN"}
_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or label names)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def for_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(board: dict | None = None) -> list[dict]:
    board = board if board is not None else dashboard()
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return found


def dashboard_queries() -> dict[str, str]:
    """'dashboard: <panel> [A]' -> its PromQL, Grafana's variables filled in."""
    queries = {}
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            queries[f"dashboard: {panel['title']} [{target['refId']}]"] = for_promql(target["expr"])
    return queries


def dashboard_variable_metrics() -> dict[str, str]:
    """'dashboard variable <name>' -> the metric a label_values() query reads."""
    found = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = _LABEL_VALUES.match(query)
            assert match, f"dashboard variable {variable['name']}: expected label_values(metric, label), got {query}"
            found[f"dashboard variable {variable['name']}"] = match.group(1)
    return found


def alert_rules() -> dict:
    return yaml.safe_load(ALERT_RULES.read_text())


def alert_queries() -> dict[str, str]:
    return {
        f"alert {rule.get('alert') or rule.get('record')}": rule["expr"]
        for group in alert_rules()["groups"]
        for rule in group["rules"]
    }


def keda_queries() -> dict[str, str]:
    queries = {}
    for obj in yaml.safe_load_all((KEDA / "scaled-objects.yaml").read_text()):
        for trigger in obj["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                queries[f"KEDA {obj['metadata']['name']} {trigger['name']}"] = trigger["metadata"]["query"]
    return queries


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_RULES.read_text())


def adapter_queries() -> dict[str, str]:
    queries = {}
    for rule in adapter_rules():
        name = rule["name"]["as"]
        queries[f"adapter {name} seriesQuery"] = rule["seriesQuery"]
        metrics_query = rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
        for template, value in ADAPTER_TEMPLATES.items():
            metrics_query = metrics_query.replace(template, value)
        queries[f"adapter {name} metricsQuery"] = metrics_query
    return queries


def all_queries() -> dict[str, str]:
    """Every PromQL expression deploy/k8s holds, by where it is."""
    return {**dashboard_queries(), **alert_queries(), **keda_queries(), **adapter_queries()}


def metrics_used() -> dict[str, set[str]]:
    """Metric name -> where deploy/k8s reads it."""
    used: dict[str, set[str]] = {}
    for where, expr in all_queries().items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    for where, name in dashboard_variable_metrics().items():
        used.setdefault(name, set()).add(where)
    return used
