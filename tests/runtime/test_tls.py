"""Mutual TLS on a real service (transcode): only clients with a certificate of the mesh's CA get in.

Certificates are made here, for this test alone, by tools/mesh_certs.py: a
CA with a certificate for "transcode" and one for "gateway" (the client), and
a second CA that the service must not trust.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime import tls
from tests.conftest import ROOT, free_ports
from tools import mesh_certs
from tools.mesh import Mesh
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc

HELLO_WAV = (ROOT / "tests" / "fixtures" / "speech_hello.wav").read_bytes()


def settings(folder: pathlib.Path) -> dict[str, str]:
    """The GRPC_TLS_* settings of the service whose files are in `folder`."""
    return {
        tls.CA_FILE.name: str(folder / "ca.crt"),
        tls.CERT_FILE.name: str(folder / "tls.crt"),
        tls.KEY_FILE.name: str(folder / "tls.key"),
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("certs")
    mesh_certs.make_certs(out / "mesh", ["transcode", "gateway"])
    mesh_certs.make_certs(out / "other", ["gateway"])  # a CA nobody in the mesh trusts
    return out


@pytest.fixture(scope="module")
async def transcode(certs):
    grpc_port, metrics_port, health_port = free_ports(3)
    env = dict(
        os.environ,
        TRANSCODE_GRPC_PORT=str(grpc_port),
        TRANSCODE_METRICS_PORT=str(metrics_port),
        GRPC_HEALTH_PORT=str(health_port),
        LOG_FORMAT="json",
        **settings(certs / "mesh" / "transcode"),
    )
    process = Mesh(["transcode"], env)
    process.echo = False
    try:
        await process.start(timeout=60)  # its health checks, over mutual TLS
        yield process
    finally:
        await process.stop()


async def decode(channel: grpc.aio.Channel) -> transcode_pb2.DecodeAudioResponse:
    return await transcode_pb2_grpc.TranscodeServiceStub(channel).DecodeAudio(
        transcode_pb2.DecodeAudioRequest(audio=HELLO_WAV), timeout=30
    )


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decode(channel)
    return caught.value.code()


async def test_a_client_with_a_certificate_of_the_mesh_is_served(transcode, certs):
    credentials = tls.load(settings(certs / "mesh" / "gateway"))
    async with tls.open_channel(transcode.address("transcode"), credentials=credentials) as channel:
        reply = await decode(channel)
    assert reply.info.sample_rate == 44100


async def test_a_client_without_one_is_refused(transcode, certs):
    address = transcode.address("transcode")
    mesh_ca = (certs / "mesh" / "ca.crt").read_bytes()
    # Plaintext; TLS without a client certificate; a certificate of another CA.
    assert await refused(grpc.aio.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE
    no_certificate = grpc.ssl_channel_credentials(root_certificates=mesh_ca)
    assert await refused(grpc.aio.secure_channel(address, no_certificate)) == grpc.StatusCode.UNAVAILABLE
    other = certs / "other" / "gateway"
    stranger = grpc.ssl_channel_credentials(
        root_certificates=mesh_ca,
        private_key=(other / "tls.key").read_bytes(),
        certificate_chain=(other / "tls.crt").read_bytes(),
    )
    assert await refused(grpc.aio.secure_channel(address, stranger)) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_of_the_mesh_does_not_trust_a_server_of_another_ca(transcode, certs):
    # The client trusts only the other CA: the service's certificate is not one of it.
    credentials = tls.load(settings(certs / "other" / "gateway"))
    channel = tls.open_channel(transcode.address("transcode"), credentials=credentials)
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_the_health_port_answers_probes_in_plaintext_and_nothing_else(transcode):
    address = f"127.0.0.1:{transcode.env['GRPC_HEALTH_PORT']}"
    async with grpc.aio.insecure_channel(address) as channel:
        for service in ("", "voice.transcode.v1.TranscodeService"):
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decode(channel)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("left_out", [tls.CERT_FILE.name, tls.KEY_FILE.name, tls.CA_FILE.name])
def test_half_a_tls_configuration_stops_the_service_with_a_reason(certs, left_out):
    grpc_port, metrics_port = free_ports(2)
    env = dict(os.environ, TRANSCODE_GRPC_PORT=str(grpc_port), TRANSCODE_METRICS_PORT=str(metrics_port))
    env.update(settings(certs / "mesh" / "transcode"))
    del env[left_out]
    result = subprocess.run(
        [sys.executable, "-m", "services.transcode"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert f"internal TLS is half configured: {left_out} not set" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_certificate_file_stops_the_service_naming_it(certs, tmp_path):
    grpc_port, metrics_port = free_ports(2)
    env = dict(os.environ, TRANSCODE_GRPC_PORT=str(grpc_port), TRANSCODE_METRICS_PORT=str(metrics_port))
    env.update(settings(certs / "mesh" / "transcode"), GRPC_TLS_CERT_FILE=str(tmp_path / "missing.crt"))
    result = subprocess.run(
        [sys.executable, "-m", "services.transcode"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert f"cannot read GRPC_TLS_CERT_FILE={tmp_path / 'missing.crt'}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
