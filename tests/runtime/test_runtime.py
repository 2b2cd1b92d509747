"""The shared runtime as every service's clients meet it: health, errors, request ids, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime import server
from runtime.errors import ApiError
from runtime.server import Servicer, ServiceSpec
from services.library import config as library_config
from tests.conftest import ROOT, free_port
from voice.api.v1 import limits_pb2, limits_pb2_grpc
from voice.library.v1 import library_pb2  # noqa: F401 - puts LibraryService in the default pool

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Sleepy:
    def __init__(self, **env: str) -> None:
        self.port = free_port()
        environment = dict(
            os.environ,
            TRANSCODE_GRPC_PORT=str(self.port),
            TRANSCODE_METRICS_PORT=str(free_port()),
            LOG_FORMAT="json",
            **env,
        )
        self.process = subprocess.Popen(
            [sys.executable, "tests/runtime/sleepy_service.py"],
            cwd=ROOT,
            env=environment,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def health(self, service: str = "test.Sleepy") -> int | None:
        try:
            return health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            ).status
        except grpc.RpcError:
            return None

    def wait_for(self, status: int, timeout: float = 30, service: str = "test.Sleepy") -> None:
        deadline = time.monotonic() + timeout
        while self.health(service) != status:
            assert time.monotonic() < deadline, "".join(self.lines[-20:])
            time.sleep(0.05)

    def call(self, method: str, payload: bytes, **kwargs):
        return self.channel.unary_unary(f"/test.Sleepy/{method}")(payload, timeout=30, **kwargs)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        self.channel.close()
        return code

    def log_entries(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]


@pytest.fixture
def sleepy():
    started = Sleepy()
    started.wait_for(SERVING)
    yield started
    started.stop()


def test_health_is_not_serving_until_start_up_is_done():
    slow = Sleepy(SLEEPY_START_SECONDS="1.5")
    try:
        deadline = time.monotonic() + 30
        while slow.health() is None:  # the port opens before start-up finishes
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert slow.health() == NOT_SERVING
        slow.wait_for(SERVING)
    finally:
        assert slow.stop() == 0


def test_readiness_moves_the_services_while_the_process_stays_alive(tmp_path):
    flag = tmp_path / "database-up"
    flag.touch()
    probed = Sleepy(SLEEPY_READY_FILE=str(flag))
    try:
        probed.wait_for(SERVING)
        flag.unlink()  # the "database" goes away
        probed.wait_for(NOT_SERVING)
        assert probed.health("") == SERVING  # alive: a liveness probe leaves it be
        flag.touch()
        probed.wait_for(SERVING)
    finally:
        assert probed.stop() == 0


def test_a_service_with_a_readiness_of_its_own_waits_for_it_and_leaves_the_others_be(tmp_path):
    database, provider = tmp_path / "database-up", tmp_path / "provider-up"
    database.touch()
    probed = Sleepy(SLEEPY_READY_FILE=str(database), SLEEPY_PICKY_READY_FILE=str(provider))
    try:
        probed.wait_for(SERVING, service="")
        # Never SERVING before its own probe passed, not even just after start-up.
        assert probed.health("test.Picky") == NOT_SERVING
        assert probed.health("test.Sleepy") == SERVING
        provider.touch()
        probed.wait_for(SERVING, service="test.Picky")
        database.unlink()  # the probe of the whole spec holds back every service
        probed.wait_for(NOT_SERVING, service="test.Picky")
        probed.wait_for(NOT_SERVING, service="test.Sleepy")
        database.touch()
        provider.unlink()
        probed.wait_for(SERVING, service="test.Sleepy")
        probed.wait_for(NOT_SERVING, service="test.Picky")
        assert probed.health("") == SERVING
    finally:
        assert probed.stop() == 0


def test_an_api_error_reaches_the_client_with_its_reason_and_field(sleepy):
    with pytest.raises(grpc.RpcError) as caught:
        sleepy.call("Fail", b"api")
    error = ApiError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "speed_factor")
    assert "between 0.5 and 2" in error.message


def test_an_unexpected_error_is_internal_without_its_traceback(sleepy):
    with pytest.raises(grpc.RpcError) as caught:
        sleepy.call("Fail", b"bug", metadata=[("x-request-id", "req-bug-1")])
    error = ApiError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INTERNAL and error.reason == "INTERNAL"
    assert "secret" not in error.message and "Traceback" not in error.message
    assert "req-bug-1" in error.message  # the id to quote when reporting it

    def traceback_logged() -> bool:  # the log line may reach us just after the answer
        logged = [e for e in sleepy.log_entries() if e.get("request_id") == "req-bug-1"]
        return any("secret internal detail" in e.get("exception", "") for e in logged)

    deadline = time.monotonic() + 10
    while not traceback_logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert traceback_logged()


def test_the_request_id_travels_with_the_call_and_its_outgoing_calls(sleepy):
    assert sleepy.call("Sleep", b"0", metadata=[("x-request-id", "req-42")]) == b"req-42"
    # Relay calls Sleep on the same server through runtime.clients: the id goes along.
    assert sleepy.call("Relay", b"", metadata=[("x-request-id", "req-43")]) == b"req-43"
    assert any(e.get("request_id") == "req-42" and e["message"] == "sleeping" for e in sleepy.log_entries())
    # Without one, the server makes one up.
    assert len(sleepy.call("Sleep", b"0")) >= 16


def test_sigterm_lets_the_call_in_flight_finish_then_exits(sleepy):
    future = sleepy.channel.unary_unary("/test.Sleepy/Sleep").future(b"1.5", timeout=30)
    time.sleep(0.3)
    sleepy.process.send_signal(signal.SIGTERM)
    assert future.result() != b""  # answered, not cut off
    assert sleepy.process.wait(timeout=30) == 0
    messages = [e["message"] for e in sleepy.log_entries()]
    assert messages.index("shutting down") < messages.index("stopped")


def test_metrics_record_rpcs_by_status_code(sleepy):
    import urllib.request

    with pytest.raises(grpc.RpcError):
        sleepy.call("Fail", b"api")
    metrics_port = None
    for entry in sleepy.log_entries():
        metrics_port = entry.get("metrics_port", metrics_port)
    expected = 'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="Fail",grpc_service="test.Sleepy"} 1.0'
    # The server counts the call as it unwinds, just after the client has its answer.
    deadline = time.monotonic() + 10
    while True:
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        if expected in body or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert expected in body


def test_the_limits_a_service_declares_are_published_with_their_configured_values():
    configured = Sleepy(SLEEPY_LONGEST_SECONDS="2.5")
    try:
        configured.wait_for(SERVING)
        reply = limits_pb2_grpc.LimitsServiceStub(configured.channel).GetLimits(limits_pb2.GetLimitsRequest(), timeout=10)
        assert {name: limit.value for name, limit in reply.limits.items()} == {"sleep_seconds": 2.5}
        assert reply.limits["sleep_seconds"].description == "longest sleep asked of test.Sleepy, in seconds"
    finally:
        configured.stop()


def test_a_service_whose_protos_name_a_limit_it_does_not_publish_does_not_start():
    library = Servicer(lambda implementation, server: None, None, "voice.library.v1.LibraryService")
    with pytest.raises(SystemExit, match=r"library does not publish the limits its protos name: collection_chars .*"
                                         r"speaker_name_chars \(named by voice.library.v1.CreateVoiceSampleRequest.speaker_name\)"):
        server.publish_limits(ServiceSpec("library", [library], limits={"transcript_chars": library_config.MAX_TRANSCRIPT_CHARS}))
