"""What every pod gets: hardening, resources; and how the services scale and
survive disruptions, with synth on GPUs in prod."""

from __future__ import annotations

import pathlib

from runtime import config
from tests.deploy.manifests import Rendering, Workload
from tests.deploy.test_agreement import service_deployments

SERVICE_USER = 10001
AUTOSCALED = {"gateway", "synth"}
GPU = "nvidia.com/gpu"


def effective(workload: Workload, container: dict, field: str):
    """A securityContext field as in force for the container (its own, else the pod's)."""
    own = container.get("securityContext", {})
    return own[field] if field in own else workload.pod.get("securityContext", {}).get(field)


def test_every_container_is_hardened(rendering):
    for workload in rendering.workloads():
        for container in workload.containers:
            where = f"{rendering.overlay}: {workload.kind} {workload.name}/{container['name']}"
            assert effective(workload, container, "runAsNonRoot") is True, where
            assert effective(workload, container, "runAsUser") == SERVICE_USER, where
            assert effective(workload, container, "allowPrivilegeEscalation") is False, where
            assert effective(workload, container, "readOnlyRootFilesystem") is True, where
            assert "ALL" in effective(workload, container, "capabilities")["drop"], where
            assert effective(workload, container, "seccompProfile") == {"type": "RuntimeDefault"}, where


def test_every_container_may_write_tmp_only_on_a_volume(rendering):
    for workload in rendering.workloads():
        volumes = {volume["name"]: volume for volume in workload.pod.get("volumes", [])}
        for container in workload.containers:
            mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{workload.name}/{container['name']} has no writable /tmp"
            assert "emptyDir" in volumes[mounts["/tmp"]], workload.name


def test_every_container_has_requests_and_limits(rendering):
    for workload in rendering.workloads():
        for container in workload.containers:
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (
                    f"{workload.name}: {kind} {resources}"
                )


def test_pods_carry_no_kubernetes_api_token(rendering):
    """No service talks to the Kubernetes API."""
    for account in rendering.of_kind("ServiceAccount"):
        assert account.get("automountServiceAccountToken") is False, account["metadata"]["name"]


def test_the_namespace_enforces_the_restricted_pod_security_standard(rendering):
    namespace = rendering.get("Namespace", rendering.namespace)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_gateway_and_synth_scale_with_load(rendering):
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in rendering.of_kind("HorizontalPodAutoscaler")
    }
    assert set(autoscalers) == AUTOSCALED
    for name, hpa in autoscalers.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        deployment = rendering.workload("Deployment", name)
        # An apply must not reset what the autoscaler chose.
        assert "replicas" not in deployment.obj["spec"], name
        # Utilization is relative to the request.
        assert "cpu" in deployment.container["resources"]["requests"], name


def test_every_service_has_a_disruption_budget_that_allows_drains(rendering):
    budgets = rendering.of_kind("PodDisruptionBudget")
    for name, deployment in service_deployments(rendering).items():
        (budget,) = [
            b
            for b in budgets
            if b["spec"]["selector"]["matchLabels"].items() <= deployment.pod_labels.items()
        ]
        assert budget["spec"].get("maxUnavailable", 0) >= 1, f"{name}: a drain could never evict its pods"


def gpus(workload: Workload) -> int:
    return int(workload.container["resources"].get("limits", {}).get(GPU, 0))


def test_prod_runs_synth_on_gpu_nodes_with_a_persistent_model_cache(rendered):
    rendering: Rendering = rendered("prod")
    synth = rendering.workload("Deployment", "synth")
    assert gpus(synth) >= 1
    assert any(key.startswith("nvidia.com/") for key in synth.pod.get("nodeSelector", {}))
    assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in synth.pod.get("tolerations", []))
    assert rendering.environment(synth.container)["SYNTH_DEVICE"].value == "cuda"
    # The Hugging Face cache is on a PersistentVolumeClaim of the overlay.
    hf_home = pathlib.PurePosixPath(rendering.environment(synth.container)["HF_HOME"].value)
    volumes = {volume["name"]: volume for volume in synth.pod["volumes"]}
    (mount,) = [
        m for m in synth.container["volumeMounts"] if pathlib.PurePosixPath(m["mountPath"]) in hf_home.parents
    ]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert rendering.get("PersistentVolumeClaim", claim) is not None
    # Providers on several nodes share it.
    assert "ReadWriteMany" in rendering.get("PersistentVolumeClaim", claim)["spec"]["accessModes"]


def test_dev_runs_on_cpu_with_the_tiny_model(rendered):
    rendering: Rendering = rendered("dev")
    for workload in rendering.workloads():
        assert gpus(workload) == 0, workload.name
    synth = rendering.environment(rendering.workload("Deployment", "synth").container)
    assert synth["DIA_MODEL"].value == "tiny-random"
    # Dev has its own PostgreSQL, and the placeholder Secret that tells it and the services the password.
    assert rendering.get("StatefulSet", "postgres") is not None
    secrets = rendering.of_kind("Secret")
    assert any(config.DATABASE_URL.name in secret.get("data", {}) for secret in secrets)


def test_prod_brings_no_database_secret(rendered):
    """The prod database URL is made outside this repository (README: PostgreSQL)."""
    assert rendered("prod").of_kind("Secret") == []
