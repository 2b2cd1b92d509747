"""`make run` brings the mesh up; every service is healthy, reflectable and measured."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import stat
import subprocess
import time
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import ROOT, make_run_environment, start_make_run
from tests.gateway.conftest import make_key
from tools import mesh as mesh_tools
from voice.gateway.v1 import models_pb2, models_pb2_grpc

# The service each process must publish, besides health and reflection.
PUBLISHED = {
    "transcode": {"voice.transcode.v1.TranscodeService"},
    "library": {"voice.library.v1.LibraryService"},
    "stt": {"voice.stt.v1.SttService"},
    "synth": {"voice.synth.v1.SynthService"},
    "gateway": {
        "voice.gateway.v1.GenerationService",
        "voice.gateway.v1.ModelService",
        "voice.gateway.v1.ProviderRegistryService",
        "voice.openai.v1.SpeechService",
    },
}
# Served by every process on the runtime; the limits service publishes its limits (runtime/limits.py).
STANDARD = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "voice.api.v1.LimitsService"}


def reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        return {service.name for service in reply.list_services_response.service}


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return reply.status


def check_service(name: str, address: str) -> None:
    published = reflected_services(address)
    assert STANDARD | PUBLISHED[name] <= published, f"{name} publishes {published}"
    for service in ["", *PUBLISHED[name]]:
        assert health_status(address, service) == health_pb2.HealthCheckResponse.SERVING


def test_transcode_exists():
    # The foundation issue delivers transcode; the suite must not silently test nothing.
    assert "transcode" in mesh_tools.existing_services()


async def test_every_running_service_is_serving_and_reflectable(mesh):
    for name in mesh.services:
        check_service(name, mesh.address(name))


async def test_metrics_count_rpcs_by_code(mesh):
    name = mesh.services[0]
    health_status(mesh.address(name))
    port = mesh.env[f"{name.upper()}_METRICS_PORT"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health"}' in body
    assert "grpc_server_handling_seconds_bucket" in body


@pytest.mark.slow
def test_make_run_starts_everything_and_ctrl_c_stops_it(tmp_path: pathlib.Path):
    env = make_run_environment(tmp_path)
    lines: list[str] = []
    process = start_make_run(env, lines)
    try:
        services = mesh_tools.existing_services()
        for name in services:
            check_service(name, f"127.0.0.1:{env[f'{name.upper()}_GRPC_PORT']}")
        if "synth" in services:  # the secret make run made is the one synth and the gateway share
            key = make_key(f"mesh-{uuid.uuid4().hex[:8]}", env)
            wait_for_a_provider(f"127.0.0.1:{env['GATEWAY_GRPC_PORT']}", key)
        # Ctrl-C: the terminal sends SIGINT to the whole foreground group.
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        lines.append(rest)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert process.returncode in (0, 2, -signal.SIGINT), output[-3000:]
    assert "Warning" not in output, output[-3000:]
    for name in services:
        assert f"{name:<9}| " in output, f"no log lines prefixed with {name}"
        assert "stopped" in output
        port = int(env[f"{name.upper()}_GRPC_PORT"])
        with pytest.raises(grpc.RpcError):
            health_status(f"127.0.0.1:{port}")
    # The provider registry's secret: kept private in MESH_PROVIDER_SECRET_FILE, never printed.
    secret_file = pathlib.Path(env["MESH_PROVIDER_SECRET_FILE"])
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text().strip() not in output


def wait_for_a_provider(gateway: str, key: str) -> None:
    deadline = time.monotonic() + 60  # a guard: heartbeats come every few seconds
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(gateway) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        while not stub.ListModels(models_pb2.ListModelsRequest(), metadata=metadata, timeout=5).data:
            assert time.monotonic() < deadline, "no synth provider registered"
            time.sleep(0.2)


def test_make_run_makes_the_provider_secret_once_and_private(tmp_path: pathlib.Path, monkeypatch):
    path = tmp_path / "var" / "provider-secret"
    secret = mesh_tools.stored_provider_secret(path)
    assert len(secret) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert mesh_tools.stored_provider_secret(path) == secret  # the next `make run` uses the same
    path.write_text("")  # cut short (a full disk, say): a new one, not an empty secret
    assert len(mesh_tools.stored_provider_secret(path)) >= 32
    # A mesh of tests gets a fresh one of its own, unless PROVIDER_SECRET is set.
    monkeypatch.delenv("PROVIDER_SECRET", raising=False)
    first, second = (mesh_tools.mesh_environment(None)["PROVIDER_SECRET"] for _ in range(2))
    assert first != second and len(first) >= 32


@pytest.mark.parametrize("setting", ["LIBRARY_GRPC_PORT", "SYNTH_METRICS_PORT", "GATEWAY_HTTP_PORT"])
def test_make_run_refuses_to_start_on_a_port_in_use(tmp_path: pathlib.Path, setting: str):
    env = make_run_environment(tmp_path)
    port = int(env[setting])
    with socket.socket() as holder:  # another mesh, say
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = subprocess.run(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"mesh     | port {port} is in use — is another mesh running? ({setting}," in result.stdout, output
    assert "ready" not in output and "Traceback" not in output
    assert not (tmp_path / "postgres").exists(), "PostgreSQL was started all the same"
    for name in mesh_tools.START_ORDER:  # and no service
        with pytest.raises(grpc.RpcError):
            health_status(f"127.0.0.1:{env[f'{name.upper()}_GRPC_PORT']}")


def test_make_run_refuses_one_port_set_for_two_servers(tmp_path: pathlib.Path):
    env = make_run_environment(tmp_path)
    env["LIBRARY_METRICS_PORT"] = port = env["STT_GRPC_PORT"]
    result = subprocess.run(
        ["make", "--no-print-directory", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"port {port} is set twice: STT_GRPC_PORT, gRPC of stt and LIBRARY_METRICS_PORT" in result.stdout
    assert not (tmp_path / "postgres").exists()


def test_readme_configuration_table_matches_the_code():
    from tools import settings_table

    settings_table.load_all()
    readme = (ROOT / "README.md").read_text()
    assert settings_table.markdown_table() in readme, (
        "README's configuration table is stale: paste the output of `python -m tools.settings_table`"
    )
