"""Whether Kubernetes NetworkPolicies let one endpoint open a connection to another.

The rules of networking.k8s.io/v1, for what the deploy tests need: a pod that
no policy selects (for a direction) is open in that direction; a selected one
takes only what some rule of a selecting policy allows. Peers are pod and
namespace selectors (matchLabels, matchExpressions) and ipBlocks; an ipBlock is
taken to match addresses outside the cluster only. Named ports resolve against
the destination's container ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and pod labels, named ports) or, with no labels, an address outside the cluster."""

    namespace: str | None = None
    namespace_labels: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        return self.pod_labels is None


OUTSIDE = Endpoint()


def namespace_labels(name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name, **(extra or {})}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        return endpoint.external
    if endpoint.external:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], endpoint.namespace_labels)
    else:
        in_namespace = endpoint.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector") or {}, endpoint.pod_labels or {})


def _port_matches(rule_ports: list[dict[str, Any]], port: int, protocol: str, destination: Endpoint) -> bool:
    if not rule_ports:
        return True
    for item in rule_ports:
        if item.get("protocol", "TCP") != protocol:
            continue
        if "port" not in item:
            return True
        wanted = item["port"]
        if isinstance(wanted, str):
            wanted = destination.ports.get(wanted)
        if wanted is not None and wanted <= port <= item.get("endPort", wanted):
            return True
    return False


def _policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _direction_allows(
    policies: list[dict[str, Any]],
    direction: str,
    subject: Endpoint,
    peer: Endpoint,
    port: int,
    protocol: str,
    destination: Endpoint,
) -> bool:
    """Whether the policies selecting `subject` for `direction` let it talk to `peer`."""
    if subject.external:
        return True  # outside the cluster: no policy of ours applies
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        policy
        for policy in policies
        if policy["metadata"]["namespace"] == subject.namespace
        and direction in _policy_types(policy)
        and selects(policy["spec"]["podSelector"], subject.pod_labels or {})
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key) or []
            peer_ok = not peers or any(_peer_matches(p, subject.namespace, peer) for p in peers)
            if peer_ok and _port_matches(rule.get("ports") or [], port, protocol, destination):
                return True
    return False


def allowed(
    policies: list[dict[str, Any]], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether `source` may open a connection to `destination` on `port`."""
    return _direction_allows(
        policies, "Egress", source, destination, port, protocol, destination
    ) and _direction_allows(policies, "Ingress", destination, source, port, protocol, destination)
