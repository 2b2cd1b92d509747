"""Routes come from a running server's reflection, and follow it when it restarts.

The servers here are bare gRPC servers that publish descriptors over
reflection (and, some, limits) and report health, standing in for "some
upstream"; the real mesh is exercised in test_http.py and test_published_limits.py.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import config, limits
from services.gateway.edge.upstreams import RouteTable
from tests.conftest import free_port
from voice.api.v1 import limits_pb2_grpc
from voice.gateway.v1 import generations_pb2, models_pb2  # noqa: F401 - put their services in the default pool
from voice.library.v1 import library_pb2  # noqa: F401 - puts LibraryService in the default pool

GENERATIONS = generations_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
LIBRARY_ROUTES = {
    "POST /v1/voice/samples": ("CreateVoiceSample", "audio", "voice_sample"),
    "GET /v1/voice/samples": ("ListVoiceSamples", "", ""),
    "GET /v1/voice/samples/{id}": ("GetVoiceSample", "", "voice_sample"),
    "GET /v1/voice/samples/{id}/audio": ("GetVoiceSampleAudio", "", "audio"),
    "PATCH /v1/voice/samples/{id}": ("UpdateVoiceSample", "*", "voice_sample"),
    "DELETE /v1/voice/samples/{id}": ("DeleteVoiceSample", "", ""),
}


async def reflecting_server(port: int, services: list[str], published: dict[str, float] | None = None) -> grpc.aio.Server:
    """A server publishing `services` (unimplemented) over reflection, SERVING; with `published`,
    those limits too, as every service on the runtime does."""
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if published is not None:
        settings = {name: config.Setting(f"TEST_{name.upper()}", value, name) for name, value in published.items()}
        limits_pb2_grpc.add_LimitsServiceServicer_to_server(limits.LimitsServicer(settings), server)
        services = [*services, limits.SERVICE_NAME]
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server


async def eventually(condition, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def library_port(monkeypatch) -> int:
    port = free_port()
    monkeypatch.setenv("LIBRARY_ADDR", f"127.0.0.1:{port}")
    return port


async def test_reflection_gives_one_route_per_http_rule(library_port):
    server = await reflecting_server(library_port, ["voice.library.v1.LibraryService"])
    table = RouteTable(["library"])
    try:
        await table.discover_all()
        found = {
            str(route): (route.rpc.method.name, route.body, route.response_body) for route in table.routes
        }
        assert found == LIBRARY_ROUTES
        assert table.undiscovered() == []
        route = table.routes[0]
        assert route.rpc.path.startswith("/voice.library.v1.LibraryService/")
        # Message classes come from the reflected descriptors, not from generated code.
        assert route.rpc.request_class is not getattr(library_pb2, route.rpc.method.input_type.name)
    finally:
        await table.close()
        await server.stop(0)


async def test_matching_picks_the_route_or_lists_the_allowed_methods(library_port):
    server = await reflecting_server(library_port, ["voice.library.v1.LibraryService"])
    table = RouteTable(["library"])
    try:
        await table.discover_all()
        route, values, _ = table.match("GET", "/v1/voice/samples/12/audio")
        assert (route.rpc.method.name, values) == ("GetVoiceSampleAudio", {"id": "12"})
        route, values, _ = table.match("DELETE", "/v1/voice/samples/12")
        assert (route.rpc.method.name, values) == ("DeleteVoiceSample", {"id": "12"})
        # A GET route answers HEAD too.
        assert table.match("PUT", "/v1/voice/samples/12") == (None, {}, ["DELETE", "GET", "HEAD", "PATCH"])
        assert table.match("GET", "/v1/voice/nothing") == (None, {}, [])
    finally:
        await table.close()
        await server.stop(0)


async def test_an_unreachable_upstream_is_reported_undiscovered(library_port):
    table = RouteTable(["library"])
    try:
        await table.discover_all()
        assert table.undiscovered() == ["library"]
        assert table.routes == []
    finally:
        await table.close()


async def test_routes_follow_an_upstream_that_starts_late_and_restarts_changed(library_port):
    table = RouteTable(["library"])
    table.start_watching()
    try:
        await table.discover_all()
        assert table.undiscovered() == ["library"]

        first = await reflecting_server(library_port, ["voice.gateway.v1.ModelService"])
        await eventually(lambda: {str(route) for route in table.routes} == {"GET /v1/models", "GET /v1/models/{id}"})
        await first.stop(0)

        # Same address, other services: the health watch reconnects and reflection runs again.
        second = await reflecting_server(library_port, ["voice.library.v1.LibraryService"])
        try:
            await eventually(lambda: {str(route) for route in table.routes} == set(LIBRARY_ROUTES))
        finally:
            await second.stop(0)
    finally:
        await table.close()


async def test_a_deadline_is_the_limit_its_upstream_publishes_kept_while_it_is_down(monkeypatch):
    """Not the gateway process's own setting: the upstream that serves the method says."""
    port = free_port()
    monkeypatch.setenv("GATEWAY_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("GATEWAY_SYNTH_TIMEOUT_SECONDS", "300")  # the edge's own environment, unused
    ordinary = config.UPSTREAM_TIMEOUT_SECONDS.value
    table = RouteTable(["gateway"])
    table.start_watching()

    def deadline() -> float | None:
        route, _, _ = table.match("POST", "/v1/voice/generations")
        return route.rpc.deadline_seconds() if route else None

    try:
        first = await reflecting_server(port, [GENERATIONS], {"synth_timeout_seconds": 7})
        await table.discover_all()
        assert deadline() == 7 + ordinary
        route, _, _ = table.match("GET", "/v1/voice/generations")
        assert route.rpc.deadline_seconds() is None  # a method naming no limit: the ordinary deadline
        await first.stop(0)
        await asyncio.sleep(0.5)
        assert deadline() == 7 + ordinary  # down: its last limits hold, as its routes do

        second = await reflecting_server(port, [GENERATIONS], {"synth_timeout_seconds": 9})
        try:
            await eventually(lambda: deadline() == 9 + ordinary)  # restarted: published again
        finally:
            await second.stop(0)
    finally:
        await table.close()


def test_unknown_upstream_names_stop_the_gateway_with_a_clear_message():
    with pytest.raises(SystemExit, match="GATEWAY_UPSTREAMS names unknown services"):
        RouteTable(["library", "nosuch"])
