"""The provider side of registration: heartbeats with ProviderInfo, retries, deregistration.

The registry here is a small in-process ProviderRegistryService that records
what it is sent, so the sender's behaviour can be checked against a
registry that is missing, unimplemented, or asking for another interval.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from runtime import provider_credentials
from services.synth.heartbeat import Heartbeats
from tests.conftest import free_port
from voice.gateway.v1 import providers_pb2, providers_pb2_grpc
from voice.synth.v1 import synth_pb2


TOKEN = "credential-of-synth-a"


class RecordingRegistry(providers_pb2_grpc.ProviderRegistryServiceServicer):
    def __init__(self, interval: float = 0.0, unimplemented_for: int = 0, accepts: str | None = None) -> None:
        self.interval = interval
        self.unimplemented_for = unimplemented_for  # refuse this many heartbeats first
        self.accepts = accepts  # the one credential taken, when set
        self.heartbeats: list[synth_pb2.ProviderInfo] = []
        self.credentials: list[str] = []  # presented with each call, deregistration included
        self.refused = 0
        self.deregistered: list[str] = []

    async def _check(self, context) -> None:
        presented = dict(context.invocation_metadata()).get(provider_credentials.TOKEN_METADATA, "")
        self.credentials.append(presented)
        if self.accepts is not None and presented != self.accepts:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong credential")

    async def Heartbeat(self, request, context):
        await self._check(context)
        if self.refused < self.unimplemented_for:
            self.refused += 1
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not yet")
        self.heartbeats.append(request.provider)
        return providers_pb2.HeartbeatResponse(heartbeat_interval_seconds=self.interval)

    async def DeregisterProvider(self, request, context):
        await self._check(context)
        self.deregistered.append(request.provider_id)
        return providers_pb2.DeregisterProviderResponse()


async def serve(registry: RecordingRegistry, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    providers_pb2_grpc.add_ProviderRegistryServiceServicer_to_server(registry, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


def info(load: list[int]) -> synth_pb2.ProviderInfo:
    return synth_pb2.ProviderInfo(
        provider_id="synth-a",
        address="10.0.0.7:50055",
        models=[synth_pb2.Model(id="tiny-random", features=["voice-cloning", "dialogue"])],
        capacity=4,
        load=load[0],
    )


async def wait_until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def port() -> int:
    return free_port()


async def test_heartbeats_carry_the_current_provider_info_at_the_registry_interval(port):
    registry = RecordingRegistry(interval=0.05)
    server = await serve(registry, port)
    load = [0]
    # The configured interval is long: only the registry's 0.05 s can make several come quickly.
    beats = Heartbeats(f"127.0.0.1:{port}", lambda: info(load), interval_seconds=60, token=TOKEN)
    beats.start()
    try:
        await wait_until(lambda: len(registry.heartbeats) >= 1)
        load[0] = 3
        await wait_until(lambda: len(registry.heartbeats) >= 3)
    finally:
        await beats.stop()
        await server.stop(0)
    first, last = registry.heartbeats[0], registry.heartbeats[-1]
    assert (first.provider_id, first.address, first.capacity, first.load) == ("synth-a", "10.0.0.7:50055", 4, 0)
    assert [(m.id, list(m.features)) for m in first.models] == [("tiny-random", ["voice-cloning", "dialogue"])]
    assert last.load == 3
    assert registry.deregistered == ["synth-a"]
    # Every heartbeat and the deregistration carried the provider's credential.
    assert set(registry.credentials) == {TOKEN}


async def test_a_registry_that_is_not_implemented_yet_is_retried_until_it_answers(port):
    registry = RecordingRegistry(interval=0.05, unimplemented_for=2)
    server = await serve(registry, port)
    beats = Heartbeats(f"127.0.0.1:{port}", lambda: info([0]), interval_seconds=60, token=TOKEN)
    beats.start()
    try:
        # The provider counts a heartbeat once the registry's answer is back.
        await wait_until(lambda: beats.sent >= 1)
    finally:
        await beats.stop()
        await server.stop(0)
    assert registry.refused == 2 and len(registry.heartbeats) >= 1


async def test_a_gateway_that_starts_later_is_registered_with_once_it_is_up(port):
    beats = Heartbeats(f"127.0.0.1:{port}", lambda: info([0]), interval_seconds=0.2, token=TOKEN)
    beats.start()
    await asyncio.sleep(0.3)  # a few failed attempts against nothing
    registry = RecordingRegistry()
    server = await serve(registry, port)
    try:
        await wait_until(lambda: len(registry.heartbeats) >= 1)
    finally:
        await beats.stop()
        await server.stop(0)


async def test_stopping_without_any_registry_ends_promptly_and_quietly(port):
    beats = Heartbeats(f"127.0.0.1:{port}", lambda: info([0]), interval_seconds=0.1, token=TOKEN)
    beats.start()
    await asyncio.sleep(0.2)
    async with asyncio.timeout(5):  # the deregistration deadline is 2 s
        await beats.stop()
    assert beats.sent == 0


async def test_a_refused_credential_is_reported_as_such_and_retried(port, caplog):
    registry = RecordingRegistry(accepts="another-credential")
    server = await serve(registry, port)
    beats = Heartbeats(f"127.0.0.1:{port}", lambda: info([0]), interval_seconds=0.05, token=TOKEN)
    beats.start()
    try:
        await wait_until(lambda: len(registry.credentials) >= 3)  # it keeps trying: the secret may be fixed
    finally:
        await beats.stop()
        await server.stop(0)
    assert beats.sent == 0 and registry.heartbeats == []
    refusals = [record for record in caplog.records if "refuses this provider's credential" in record.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelname == "ERROR"  # said once, not at every retry
    assert TOKEN not in caplog.text
