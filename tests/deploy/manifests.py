"""The rendered Kubernetes manifests (deploy/k8s) and what a container in them gets."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
# "$(POD_IP):50055": an env value built from another variable of the container.
VARIABLE_REFERENCE = re.compile(r"\$\((\w+)\)")


def render_with_components(overlay: str, components: tuple[str, ...], workspace: pathlib.Path) -> list[dict[str, Any]]:
    """An overlay rendered with optional components added to its `components:`, as an operator
    adds them: deploy/k8s is copied into `workspace` and the copy's overlay edited."""
    copied = workspace / "k8s"
    shutil.copytree(K8S, copied)
    kustomization = copied / "overlays" / overlay / "kustomization.yaml"
    document = yaml.safe_load(kustomization.read_text())
    document.setdefault("components", []).extend(f"../../components/{name}" for name in components)
    kustomization.write_text(yaml.safe_dump(document, sort_keys=False))
    return render(copied / "overlays" / overlay)


def render(folder: pathlib.Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` renders; skips the test where kubectl is absent."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered here")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class Workload:
    """A Deployment, StatefulSet or Job and its pod template."""

    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def pod(self) -> dict[str, Any]:
        return self.obj["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict[str, str]:
        return self.obj["spec"]["template"]["metadata"].get("labels", {})

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.pod.get("initContainers", []) + self.pod["containers"]

    @property
    def container(self) -> dict[str, Any]:
        """The main (first) container."""
        return self.pod["containers"][0]

    def ports(self) -> dict[str, int]:
        """Named container ports of the main container."""
        return {port["name"]: port["containerPort"] for port in self.container.get("ports", [])}


@dataclass
class Rendering:
    """One overlay's objects, with look-ups by kind and name."""

    overlay: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    @property
    def namespace(self) -> str:
        (namespace,) = {
            obj["metadata"].get("namespace") for obj in self.objects if obj["kind"] != "Namespace"
        }
        return namespace

    def workloads(self) -> Iterator[Workload]:
        for obj in self.objects:
            if obj["kind"] in WORKLOAD_KINDS:
                yield Workload(obj)

    def workload(self, kind: str, name: str) -> Workload:
        obj = self.get(kind, name)
        assert obj is not None, f"{self.overlay}: no {kind} {name}"
        return Workload(obj)

    def environment(self, container: dict[str, Any]) -> dict[str, "EnvValue"]:
        """Every variable the container gets: envFrom first, then env (which wins)."""
        variables: dict[str, EnvValue] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                config_map = self.get("ConfigMap", source["configMapRef"]["name"])
                assert config_map is not None, f"{self.overlay}: missing ConfigMap {source['configMapRef']}"
                for key, value in (config_map.get("data") or {}).items():
                    variables[key] = EnvValue(value=value)
            else:
                raise AssertionError(f"{self.overlay}: unexpected envFrom source {source}")
        for item in container.get("env", []):
            variables[item["name"]] = EnvValue(value=item.get("value"), source=item.get("valueFrom"))
        return variables


@dataclass
class EnvValue:
    value: str | None = None  # a literal (from env or a ConfigMap)
    source: dict[str, Any] | None = None  # valueFrom: a Secret key, a field of the pod

    def is_set(self) -> bool:
        return self.value is not None or self.source is not None
