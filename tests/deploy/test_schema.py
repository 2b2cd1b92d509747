"""Every overlay renders, and what it renders is valid Kubernetes 1.30, strictly:
an unknown or misspelt field is an error, not something the cluster drops.
Custom resources of the optional components (PodMonitor, PrometheusRule,
ScaledObject) are held to their CRDs' schemas (crd-schemas/) as strictly."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import shutil

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.manifests import K8S, render

KUBERNETES_VERSION = "1.30"
CRD_SCHEMAS = pathlib.Path(__file__).resolve().parent / "crd-schemas"


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict | None:
    """The vendored schema of a custom resource (monitoring.coreos.com/v1 PodMonitor), or None."""
    if "/" not in api_version:
        return None
    group, version = api_version.split("/", 1)
    path = CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    return json.loads(path.read_text()) if path.exists() else None


def validation_errors(objects: list[dict]) -> list[str]:
    errors = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        schema = crd_schema(obj.get("apiVersion", ""), obj.get("kind", ""))
        if schema is not None:
            for error in jsonschema.Draft7Validator(schema).iter_errors(obj):
                path = ".".join(str(item) for item in error.absolute_path)
                errors.append(f"{where}: {path}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(item) for item in error.path)
            errors.append(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:  # a misspelt kind or apiVersion
            errors.append(f"{where}: {error.message}")
    return errors


def test_every_object_is_valid_kubernetes(rendering):
    kinds = {obj["kind"] for obj in rendering.objects}
    assert {"Deployment", "Service", "NetworkPolicy", "Job"} <= kinds
    assert validation_errors(rendering.objects) == []


def _misspell_containers(deployment):
    pod = deployment["spec"]["template"]["spec"]
    pod["containres"] = pod.pop("containers")


def _unknown_container_field(deployment):
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"


def _port_of_wrong_type(deployment):
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"


def _misspelt_api_version(deployment):
    deployment["apiVersion"] = "apps/v1beta9"


@pytest.mark.parametrize(
    "typo", [_misspell_containers, _unknown_container_field, _port_of_wrong_type, _misspelt_api_version]
)
def test_validation_rejects_a_typo(rendered, typo):
    deployment = copy.deepcopy(rendered("dev").of_kind("Deployment")[0])
    assert validation_errors([deployment]) == []
    typo(deployment)
    assert validation_errors([deployment]) != []


def test_a_typo_in_a_manifest_fails_the_run(tmp_path):
    """The whole path, from a file under deploy/k8s to validation, catches a misspelt key."""
    copied = tmp_path / "k8s"
    shutil.copytree(K8S, copied)
    manifest = copied / "base" / "library.yaml"
    manifest.write_text(manifest.read_text().replace("failureThreshold:", "failureTreshold:", 1))
    errors = validation_errors(render(copied / "overlays" / "dev"))
    assert any(error.startswith("Deployment/library") and "failureTreshold" in error for error in errors), (
        errors
    )
