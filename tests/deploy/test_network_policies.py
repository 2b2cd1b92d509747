"""The NetworkPolicies let through every call the code makes, and little else."""

from __future__ import annotations

import functools

from tests.deploy import code_facts
from tests.deploy.manifests import Rendering, Workload
from tests.deploy.netpol import OUTSIDE, Endpoint, allowed, namespace_labels
from tests.deploy.test_agreement import migration_job, service_deployments, value_in

POSTGRES_PORT = 5432
DNS = Endpoint("kube-system", namespace_labels("kube-system"), {"k8s-app": "kube-dns"})
MONITORING = Endpoint("monitoring", namespace_labels("monitoring"), {"app.kubernetes.io/name": "prometheus"})
# A pod of some other application in some other namespace.
STRANGER = Endpoint("default", namespace_labels("default"), {"app": "something-else"})


class Cluster:
    """The overlay's pods as network endpoints, and its policies."""

    def __init__(self, rendering: Rendering) -> None:
        self.rendering = rendering
        self.policies = rendering.of_kind("NetworkPolicy")
        namespace = rendering.get("Namespace", rendering.namespace)
        self.namespace_labels = namespace_labels(
            rendering.namespace, namespace["metadata"].get("labels") if namespace else None
        )

    def endpoint(self, workload: Workload) -> Endpoint:
        return Endpoint(
            self.rendering.namespace, self.namespace_labels, workload.pod_labels, workload.ports()
        )

    def database(self) -> tuple[Endpoint, int]:
        """The PostgreSQL pod where the overlay runs one (dev), else a server outside the cluster."""
        for workload in self.rendering.workloads():
            for port in workload.container.get("ports", []):
                if port["containerPort"] == POSTGRES_PORT:
                    return self.endpoint(workload), POSTGRES_PORT
        return OUTSIDE, POSTGRES_PORT

    def allows(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return allowed(self.policies, source, destination, port, protocol)


def code_calls(rendering: Rendering, code) -> dict[str, set[str]]:
    """Who calls whom, from the code and the settings in each service's container."""
    deployments = service_deployments(rendering)
    return {
        name: code_facts.calls(name, functools.partial(value_in, rendering, code, deployment.container))
        for name, deployment in deployments.items()
    }


def test_every_call_the_code_makes_is_allowed(rendering, code):
    cluster = Cluster(rendering)
    deployments = service_deployments(rendering)
    calls = code_calls(rendering, code)
    assert calls["library"], "the code makes no call: the who-calls-whom reading is broken"
    for caller, callees in calls.items():
        for callee in callees:
            assert callee in deployments, f"{caller} calls {callee!r}, which is no service"
            port = deployments[callee].ports()["grpc"]
            assert cluster.allows(
                cluster.endpoint(deployments[caller]), cluster.endpoint(deployments[callee]), port
            ), f"{rendering.overlay}: {caller} calls {callee}, and a NetworkPolicy blocks it"


def test_only_callers_and_the_gateway_reach_a_services_grpc_port(rendering, code):
    cluster = Cluster(rendering)
    deployments = service_deployments(rendering)
    calls = code_calls(rendering, code)
    for caller, source in deployments.items():
        for callee, destination in deployments.items():
            reaches = cluster.allows(
                cluster.endpoint(source), cluster.endpoint(destination), destination.ports()["grpc"]
            )
            if reaches:
                assert callee in calls[caller] or caller == "gateway", (
                    f"{caller} may reach {callee} without calling it"
                )
    for callee, destination in deployments.items():
        for outsider in (STRANGER, OUTSIDE):
            assert not cluster.allows(outsider, cluster.endpoint(destination), destination.ports()["grpc"]), (
                callee
            )


def test_the_public_api_is_reachable_from_anywhere(rendering):
    cluster = Cluster(rendering)
    gateway = rendering.workload("Deployment", "gateway")
    for outsider in (STRANGER, OUTSIDE):
        assert cluster.allows(outsider, cluster.endpoint(gateway), gateway.ports()["http"])


def test_only_the_services_that_own_data_reach_postgresql(rendering):
    cluster = Cluster(rendering)
    database, port = cluster.database()
    owners = code_facts.database_users()
    assert owners, "no service owns data: the reading of the code is broken"
    for name, deployment in service_deployments(rendering).items():
        reaches = cluster.allows(cluster.endpoint(deployment), database, port)
        assert reaches == (name in owners), f"{rendering.overlay}: {name} reaches PostgreSQL: {reaches}"
    assert cluster.allows(cluster.endpoint(migration_job(rendering)), database, port)
    assert not cluster.allows(STRANGER, database, port) or database.external


def test_every_pod_resolves_names(rendering):
    cluster = Cluster(rendering)
    for workload in rendering.workloads():
        assert cluster.allows(cluster.endpoint(workload), DNS, 53, "UDP"), workload.name


def test_metrics_are_scraped_from_the_monitoring_namespace_only(rendering):
    cluster = Cluster(rendering)
    for name, deployment in service_deployments(rendering).items():
        port = deployment.ports()["metrics"]
        assert cluster.allows(MONITORING, cluster.endpoint(deployment), port), name
        assert not cluster.allows(STRANGER, cluster.endpoint(deployment), port), name


def test_the_settings_that_name_upstreams_exist(code):
    """Renaming GATEWAY_UPSTREAMS in the code must not leave the call graph above without it."""
    for service, setting in code_facts.UPSTREAM_SETTINGS.items():
        assert code.settings[setting].owner == service
