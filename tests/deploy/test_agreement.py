"""The manifests agree with the code: the settings each container gets, the
ports, the health names the probes ask for, the addresses, the folders."""

from __future__ import annotations

import pathlib

import pytest

from runtime import config, server, tls
from tests.deploy import code_facts
from tests.deploy.manifests import VARIABLE_REFERENCE, Rendering, Workload

MIGRATION_MODULE = "tools.migrate"
# The services that load a model at start-up, and how long their startupProbe must allow for it.
MODEL_SERVICES = {"synth", "stt"}
MODEL_LOADING_SECONDS = 600
# After the grace period for in-flight calls, the time a service's on_stop may take.
STOP_MARGIN_SECONDS = 5


def service_deployments(rendering: Rendering) -> dict[str, Workload]:
    return {name: rendering.workload("Deployment", name) for name in config.SERVICE_PORTS}


def migration_job(rendering: Rendering) -> Workload:
    (job,) = [
        w
        for w in rendering.workloads()
        if w.kind == "Job" and MIGRATION_MODULE in w.container.get("args", [])
    ]
    return job


def value_in(rendering: Rendering, code, container: dict, name: str):
    """A setting's value in the container: what the manifests set, else the code's default."""
    variable = rendering.environment(container).get(name)
    if variable is not None and variable.value is not None:
        return variable.value
    return code.settings[name].default


def test_every_service_has_a_deployment_a_service_and_an_account(rendering):
    for name, deployment in service_deployments(rendering).items():
        assert rendering.get("Service", name) is not None, f"no Service {name}"
        assert rendering.get("ServiceAccount", name) is not None, f"no ServiceAccount {name}"
        assert deployment.pod["serviceAccountName"] == name


def test_containers_set_only_settings_their_code_reads(rendering, code):
    """A misspelt or stale variable would be ignored by the service without a word."""
    workloads = {**service_deployments(rendering), None: migration_job(rendering)}
    for service, workload in workloads.items():
        environment = rendering.environment(workload.container)
        # A variable that only serves to build another one ("$(POD_IP):50055") is read by Kubernetes.
        building_blocks = {
            ref
            for variable in environment.values()
            for ref in VARIABLE_REFERENCE.findall(variable.value or "")
        }
        readable = code.readable_by(service) | set(code_facts.THIRD_PARTY_VARIABLES) | building_blocks
        unknown = set(environment) - readable
        assert not unknown, (
            f"{rendering.overlay}: {workload.name} sets {sorted(unknown)}, which no code of it reads"
        )


def test_settings_without_a_default_are_set(rendering, code):
    for service, deployment in service_deployments(rendering).items():
        environment = rendering.environment(deployment.container)
        missing = {
            name
            for name in code.required_by(service)
            if not (name in environment and environment[name].is_set())
        }
        assert not missing, f"{rendering.overlay}: {service} needs {sorted(missing)}"
    job_environment = rendering.environment(migration_job(rendering).container)
    assert job_environment[config.DATABASE_URL.name].is_set()


def test_the_database_url_comes_from_a_secret(rendering, code):
    for service, deployment in service_deployments(rendering).items():
        variable = rendering.environment(deployment.container).get(config.DATABASE_URL.name)
        if service in code_facts.database_users():
            assert variable.source and "secretKeyRef" in variable.source, (
                f"{service}: DATABASE_URL from {variable}"
            )
        else:
            assert variable is None, f"{service} owns no data but gets DATABASE_URL"
    job_variable = rendering.environment(migration_job(rendering).container)[config.DATABASE_URL.name]
    assert "secretKeyRef" in job_variable.source


def expected_ports(rendering: Rendering, code, service: str, container: dict) -> dict[str, int]:
    """The ports the service listens on, named as the manifests name them."""
    prefix = service.upper()
    ports = {
        "grpc": int(value_in(rendering, code, container, config.SERVICES[service].grpc_port.name)),
        "metrics": int(value_in(rendering, code, container, config.SERVICES[service].metrics_port.name)),
    }
    if f"{prefix}_HTTP_PORT" in code.settings:
        ports["http"] = int(value_in(rendering, code, container, f"{prefix}_HTTP_PORT"))
    return ports


def test_container_ports_are_the_ports_the_services_listen_on(rendering, code):
    for service, deployment in service_deployments(rendering).items():
        assert deployment.ports() == expected_ports(rendering, code, service, deployment.container)


def test_service_ports_target_the_container_ports_of_the_same_name(rendering):
    for service, deployment in service_deployments(rendering).items():
        kube_service = rendering.get("Service", service)
        selector = kube_service["spec"]["selector"]
        assert selector.items() <= deployment.pod_labels.items(), f"Service {service} selects no pod of it"
        container_ports = deployment.ports()
        named = {}
        for port in kube_service["spec"]["ports"]:
            target = port["targetPort"]
            named[port["name"]] = container_ports.get(target) if isinstance(target, str) else target
        assert named == container_ports, f"Service {service}: {named} for container ports {container_ports}"


def probes(container: dict) -> dict[str, dict]:
    return {
        kind: container[kind]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in container
    }


def tls_is_on(rendering: Rendering, code, container: dict) -> bool:
    return any(value_in(rendering, code, container, setting.name) for setting in tls.FILES)


def probe_port(rendering: Rendering, code, deployment: Workload) -> int:
    """Where kubelet's gRPC probes, which speak no TLS, get an answer: GRPC_HEALTH_PORT when
    set, else the gRPC port, which answers them only while internal TLS is off."""
    health_port = int(value_in(rendering, code, deployment.container, server.HEALTH_PORT.name) or 0)
    if health_port:
        return health_port
    assert not tls_is_on(rendering, code, deployment.container), (
        f"{rendering.overlay}: {deployment.name} has internal TLS on and no GRPC_HEALTH_PORT for its probes"
    )
    return deployment.ports()["grpc"]


def test_probes_check_the_published_health_names(rendering, code):
    not_yet = sorted(set(config.SERVICE_PORTS) - set(code.health_names))
    for service, deployment in service_deployments(rendering).items():
        if service in not_yet:
            continue
        published = {""} | set(code.health_names[service])
        found = probes(deployment.container)
        assert {"readinessProbe", "livenessProbe"} <= set(found), f"{service} probes: {sorted(found)}"
        for kind, probe in found.items():
            assert "grpc" in probe, f"{service} {kind} is not a gRPC health check"
            assert probe["grpc"]["port"] == probe_port(rendering, code, deployment), f"{service} {kind} port"
            assert probe["grpc"].get("service", "") in published, f"{service} {kind} asks for an unknown name"
        # Readiness asks for the service the pod is there for.
        assert found["readinessProbe"]["grpc"].get("service") in code.health_names[service]
    if not_yet:
        pytest.skip(f"no services/<name>/__main__.py yet, health names unknown: {', '.join(not_yet)}")


def test_model_loading_is_covered_by_a_startup_probe(rendering):
    for service in MODEL_SERVICES:
        probe = rendering.workload("Deployment", service).container.get("startupProbe")
        assert probe is not None, f"{service} has no startupProbe: liveness would kill it while it loads"
        allowed = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        assert allowed >= MODEL_LOADING_SECONDS, f"{service} startupProbe allows {allowed} s"


def test_service_addresses_point_at_the_services_grpc_ports(rendering):
    """TRANSCODE_ADDR=transcode:50053 is the transcode Service, on its gRPC port."""
    for workload in service_deployments(rendering).values():
        environment = rendering.environment(workload.container)
        for settings in config.SERVICES.values():
            variable = environment.get(settings.address.name)
            assert variable is not None and variable.value, (
                f"{workload.name}: {settings.address.name} is not set"
            )
            host, _, port = variable.value.rpartition(":")
            kube_service = rendering.get("Service", host.split(".")[0])
            assert kube_service is not None, f"{settings.address.name}={variable.value}: no such Service"
            grpc_ports = [p["port"] for p in kube_service["spec"]["ports"] if p["name"] == "grpc"]
            assert grpc_ports == [int(port)], f"{settings.address.name}={variable.value}"


def test_addresses_built_from_the_pod_ip_use_its_grpc_port(rendering):
    """SYNTH_ADVERTISE_ADDRESS=$(POD_IP):50055: the gateway must reach the provider there."""
    built = 0
    for deployment in service_deployments(rendering).values():
        environment = rendering.environment(deployment.container)
        for name, variable in environment.items():
            references = VARIABLE_REFERENCE.findall(variable.value or "")
            if not references:
                continue
            (reference,) = references
            assert environment[reference].source == {"fieldRef": {"fieldPath": "status.podIP"}}, name
            assert variable.value == f"$({reference}):{deployment.ports()['grpc']}", name
            built += 1
    assert built, "no service advertises its pod address"


def test_folders_the_services_write_are_writable_volumes(rendering, code):
    """The root filesystem is read-only: every *_DIR setting and HF_HOME must be on a volume."""
    for service, deployment in service_deployments(rendering).items():
        writable = [
            pathlib.PurePosixPath(mount["mountPath"])
            for mount in deployment.container.get("volumeMounts", [])
        ]
        environment = rendering.environment(deployment.container)
        folders = [name for name in code.readable_by(service) if name.endswith("_DIR")]
        folders += [name for name in code_facts.THIRD_PARTY_VARIABLES if name in environment]
        for name in folders:
            value = environment[name].value if name in environment else code.settings[name].default
            folder = (
                pathlib.PurePosixPath("/app") / value
            )  # the image's working folder; an absolute value wins
            assert any(folder == mount or mount in folder.parents for mount in writable), (
                f"{rendering.overlay}: {service} writes {name}={folder}, on the read-only root filesystem"
            )


def test_termination_grace_covers_the_shutdown(rendering, code):
    """Kubernetes kills a pod after terminationGracePeriodSeconds: in-flight calls must finish before."""
    for service, deployment in service_deployments(rendering).items():
        container = deployment.container
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = float(value_in(rendering, code, container, config.SHUTDOWN_GRACE_SECONDS.name))
        allowed = deployment.pod.get("terminationGracePeriodSeconds", 30)
        assert allowed >= pre_stop + grace + STOP_MARGIN_SECONDS, (
            f"{service}: {allowed} s < {pre_stop} + {grace}"
        )


def test_the_migration_job_runs_the_migration_tool(rendering):
    job = migration_job(rendering)
    assert job.container["args"] == [MIGRATION_MODULE]
    assert job.pod["restartPolicy"] in ("Never", "OnFailure")
    assert job.obj["spec"].get("activeDeadlineSeconds"), "a stuck migration must not hang the rollout"


def test_the_public_http_port_serves_no_metrics(rendering, code):
    """Metrics are scraped from the metrics port (reached from `monitoring` only), never from the internet."""
    gateway = rendering.workload("Deployment", "gateway").container
    assert value_in(rendering, code, gateway, "GATEWAY_PUBLIC_METRICS") == "false", rendering.overlay
