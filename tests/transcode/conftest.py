"""The transcode service as a real process (``python -m services.transcode``) for the gRPC tests."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tools.mesh import free_port
from voice.transcode.v1 import transcode_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Small, so the size limit can be tested at its edge with a file made in memory.
MAX_INPUT_BYTES = 2_000_000
MAX_DURATION_SECONDS = 600.0
START_TIMEOUT_SECONDS = 60


class TranscodeProcess:
    max_input_bytes = MAX_INPUT_BYTES
    max_duration_seconds = MAX_DURATION_SECONDS

    def __init__(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        env = dict(
            os.environ,
            TRANSCODE_GRPC_PORT=str(port),
            TRANSCODE_METRICS_PORT=str(free_port()),
            TRANSCODE_MAX_INPUT_BYTES=str(MAX_INPUT_BYTES),
            TRANSCODE_MAX_DURATION_SECONDS=str(MAX_DURATION_SECONDS),
            TRANSCODE_WORKERS="2",
            SHUTDOWN_GRACE_SECONDS="2",
            LOG_FORMAT="text",
        )
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.transcode"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"transcode exited with {self.process.returncode}:\n{self.output()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        pytest.fail(f"transcode not SERVING after {START_TIMEOUT_SECONDS} s:\n{self.output()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session")
def transcode_process():
    service = TranscodeProcess()
    try:
        service.wait_until_serving()
        yield service
    finally:
        code = service.stop()
    output = service.output()
    # An exception the service did not map would be logged with its traceback.
    assert "Traceback" not in output, output[-4000:]
    assert code == 0, f"transcode exited with {code}:\n{output[-4000:]}"


@pytest.fixture(scope="session")
def transcode(transcode_process) -> transcode_pb2_grpc.TranscodeServiceStub:
    size = 64 * 1024 * 1024
    options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
    with grpc.insecure_channel(transcode_process.address, options=options) as channel:
        yield transcode_pb2_grpc.TranscodeServiceStub(channel)
