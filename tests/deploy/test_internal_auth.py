"""Internal authentication in the manifests: the provider registry's secret comes
from a Secret to the registry and its providers alone, and prod runs every
internal gRPC connection over mutual TLS with certificates in the layout that
tools/mesh_certs.py (and cert-manager) write."""

from __future__ import annotations

import base64
import pathlib

from cryptography import x509

from runtime import config, provider_credentials, tls
from tests.deploy import code_facts
from tests.deploy.manifests import Rendering
from tests.deploy.test_agreement import migration_job, service_deployments
from tools import mesh_certs

SECRET = provider_credentials.PROVIDER_SECRET.name


def registry_and_providers() -> set[str]:
    """The gateway, and the services whose code calls its registry (synth's heartbeats)."""
    providers = {name for name in config.SERVICE_PORTS if code_facts.PROVIDER_REGISTRY in code_facts.literal_calls(name)}
    return {code_facts.PROVIDER_REGISTRY} | providers


def test_the_provider_secret_reaches_the_registry_and_its_providers_alone_from_one_secret(rendering: Rendering):
    needing = registry_and_providers()
    assert needing >= {"gateway", "synth"}
    references = set()
    workloads = {**service_deployments(rendering), None: migration_job(rendering)}
    for service, workload in workloads.items():
        variable = rendering.environment(workload.container).get(SECRET)
        if service not in needing:
            assert variable is None, f"{rendering.overlay}: {workload.name} gets {SECRET} and has no use for it"
            continue
        assert variable is not None and variable.source and "secretKeyRef" in variable.source, (
            f"{rendering.overlay}: {service} gets {SECRET} from {variable}, not from a Secret"
        )
        reference = variable.source["secretKeyRef"]
        references.add((reference["name"], reference["key"]))
    assert len(references) == 1, f"{rendering.overlay}: the registry and its providers read different secrets {references}"
    (name, key), = references
    secret = rendering.get("Secret", name)
    if rendering.overlay == "prod":
        assert secret is None  # made outside this repository (README)
    else:
        value = base64.b64decode(secret["data"][key]).decode()
        assert len(value) >= provider_credentials.MIN_SECRET_CHARS  # or the gateway would not start


def mounted_file(rendering: Rendering, workload, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path` in the workload's main container."""
    volumes = {volume["name"]: volume for volume in workload.pod.get("volumes", [])}
    file = pathlib.PurePosixPath(path)
    for mount in workload.container.get("volumeMounts", []):
        if pathlib.PurePosixPath(mount["mountPath"]) == file.parent:
            assert mount.get("readOnly") is True, f"{workload.name}: {mount['mountPath']} is writable"
            secret = volumes[mount["name"]].get("secret")
            assert secret is not None, f"{workload.name}: {path} is not on a Secret volume"
            keys = {item["path"]: item["key"] for item in secret.get("items", [])} or {file.name: file.name}
            return secret["secretName"], keys[file.name]
    raise AssertionError(f"{rendering.overlay}: {workload.name} has nothing mounted at {file.parent}")


def test_prod_runs_every_internal_connection_over_mutual_tls(rendered):
    rendering: Rendering = rendered("prod")
    secrets_used = {}
    for service, deployment in service_deployments(rendering).items():
        environment = rendering.environment(deployment.container)
        files = {setting.name: environment.get(setting.name) for setting in tls.FILES}
        assert all(variable and variable.value for variable in files.values()), f"{service}: {files}"
        mounted = {mounted_file(rendering, deployment, variable.value) for variable in files.values()}
        (secret_name,) = {name for name, _ in mounted}  # one Secret holds the three files
        assert {key for _, key in mounted} == {"ca.crt", "tls.crt", "tls.key"}
        secrets_used[service] = secret_name
        assert environment[tls.SERVER_NAME.name].value, "providers are called at their pod IP: a name is needed"
    # Each service its own certificate.
    assert len(set(secrets_used.values())) == len(secrets_used), secrets_used


def test_mesh_certs_make_the_files_prod_mounts_for_the_names_it_checks(rendered, tmp_path):
    rendering: Rendering = rendered("prod")
    mesh_certs.make_certs(tmp_path, list(config.SERVICE_PORTS), namespace=rendering.namespace)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for service, deployment in service_deployments(rendering).items():
        environment = rendering.environment(deployment.container)
        for setting in tls.FILES:
            assert (tmp_path / service / pathlib.PurePosixPath(environment[setting.name].value).name).exists()
        cert = x509.load_pem_x509_certificate((tmp_path / service / "tls.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        # The name every client checks, and the Service's own name (for grpcurl and the like).
        assert environment[tls.SERVER_NAME.name].value in names
        assert f"{service}.{rendering.namespace}.svc" in names
