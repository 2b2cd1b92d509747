"""The services the HTTP front routes to, and the route table made from them.

Each upstream's routes come from reflection (see discovery.py), with the
limits it publishes (deadlines, longest texts), and both are refreshed
whenever the upstream (re)starts: the gateway keeps a
``grpc.health.v1`` Watch stream open to each upstream while it serves, and
reflects again each time a new stream reports SERVING. When the upstream stops
serving or goes away, the gateway lets go of the stream and tries a new one
with a growing backoff. An upstream that is down keeps its last routes and
limits, so its endpoints answer 503 rather than 404 and stay documented as
they were. The gateway's own services are an InProcessUpstream: their routes
are known from the start and their methods are called in process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime import clients, config, limits
from runtime.clients import FIRST_RECONNECT_SECONDS, RECONNECT_BACKOFF_SECONDS
from runtime.server import Servicer, reflection_pool, stop_task
from services.gateway.edge import discovery
from services.gateway.edge.config import READINESS_CHECK_TIMEOUT_SECONDS
from services.gateway.edge.discovery import Route

log = logging.getLogger("gateway.upstreams")

SERVING = health_pb2.HealthCheckResponse.SERVING
# Whether this process's own services are ready (its health's answer).
Readiness = Callable[[], Awaitable[bool]]


class Upstream:
    def __init__(self, name: str, address: str, on_routes_changed) -> None:
        self.name = name
        self.address = address
        # Calls carry the request id and a deadline; the control channel
        # (reflection, the long-lived health watch) must not get that deadline.
        self.channel = clients.channel(address)
        self.control = clients.control_channel(address)
        self.routes: list[Route] = []
        self.comments: dict[str, str] = {}  # of its protos, by full name
        self.services: list[str] = []  # what it serves, besides health, reflection and limits
        self.limits: dict[str, float] = {}  # what it publishes, by name
        self.discovered = False
        self._on_routes_changed = on_routes_changed
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None

    async def discover(self) -> None:
        """Reflect on the upstream and replace its routes."""
        async with self._lock:
            timeout = config.UPSTREAM_TIMEOUT_SECONDS.value
            pool, services, comments = await discovery.reflect(self.control, timeout)
            limits = await discovery.published_limits(self.control, timeout)
            self.routes = discovery.routes_of(self.name, pool, services, limits)
            self.limits = limits
            self.comments = comments
            self.services = [name for name in services if not name.startswith("grpc.")]
            self.discovered = True
        log.info(
            "discovered upstream",
            extra={"upstream": self.name, "routes": [str(route) for route in self.routes], "limits": self.limits},
        )
        self._on_routes_changed()

    async def try_discover(self) -> bool:
        try:
            await self.discover()
            return True
        except grpc.RpcError as error:
            log.warning("cannot reflect on upstream %s yet: %s", self.name, error.code().name)
            return False
        except discovery.DiscoveryError as error:
            log.warning("cannot reflect on upstream %s: %s", self.name, error)
            return False

    def start_watching(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        backoff = FIRST_RECONNECT_SECONDS
        while True:
            stream = health_pb2_grpc.HealthStub(self.control).Watch(health_pb2.HealthCheckRequest(service=""))
            try:
                async for reply in stream:
                    # Not serving: starting, or stopping. Let go of the stream (an open
                    # one would hold up the upstream's graceful stop) and ask again later.
                    if reply.status != SERVING or not await self.try_discover():
                        break
                    backoff = FIRST_RECONNECT_SECONDS
            except grpc.RpcError:
                pass  # the upstream went away; wait for it to come back
            finally:
                stream.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_SECONDS.value)

    async def is_serving(self) -> bool:
        """Ready: each of its services SERVING ("" only says the process is alive)."""
        stub = health_pb2_grpc.HealthStub(self.control)
        for service in self.services or [""]:
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=READINESS_CHECK_TIMEOUT_SECONDS.value,
                )
            except grpc.RpcError:
                return False
            if reply.status != SERVING:
                return False
        return True

    async def close(self) -> None:
        await stop_task(self._watcher)
        await self.channel.close()
        await self.control.close()


@dataclass(frozen=True)
class InProcess:
    """This very process's services (the gateway's own): its name among the upstreams, its servicers,
    and whether they are all ready."""

    name: str
    servicers: Sequence[Servicer]
    readiness: Readiness


class InProcessUpstream:
    """The services of this very process, called in process, not over gRPC."""

    def __init__(self, own: InProcess, on_routes_changed) -> None:
        self.name = own.name
        self.servicers = list(own.servicers)
        self._readiness = own.readiness
        self.routes: list[Route] = []
        self.comments: dict[str, str] = {}
        self.services = [servicer.full_name for servicer in self.servicers]
        self.limits: dict[str, float] = {}
        self.discovered = False
        self._on_routes_changed = on_routes_changed

    async def discover(self) -> None:
        """Routes from this process's own descriptors and limits (they cannot change while it runs)."""
        self.limits = limits.values()
        implementations = {servicer.full_name: servicer.implementation for servicer in self.servicers}
        self.routes = discovery.routes_of(
            self.name, descriptor_pool.Default(), self.services, self.limits, implementations
        )
        self.comments = discovery.commented_files(reflection_pool(), self.services)
        self.discovered = True
        log.info("serving this process's services in process", extra={"upstream": self.name, "routes": len(self.routes)})
        self._on_routes_changed()

    async def try_discover(self) -> bool:
        await self.discover()
        return True

    def start_watching(self) -> None:
        pass  # nothing to watch: it is this process

    async def is_serving(self) -> bool:
        """Ready as its health says: the process's readiness, and each service's own."""
        return await self._readiness()

    async def close(self) -> None:
        pass


class RouteTable:
    """Every upstream's routes, most specific template first."""

    def __init__(self, names: list[str], in_process: InProcess | None = None) -> None:
        unknown = [name for name in names if name not in config.SERVICES]
        if unknown:
            raise SystemExit(
                f"GATEWAY_UPSTREAMS names unknown services {unknown}; known: {sorted(config.SERVICES)}"
            )
        self.upstreams: dict[str, Upstream | InProcessUpstream] = {
            name: Upstream(name, config.SERVICES[name].address.value, self._rebuild) for name in names
        }
        if in_process is not None and in_process.name in self.upstreams:
            self.upstreams[in_process.name] = InProcessUpstream(in_process, self._rebuild)
        self.routes: list[Route] = []

    def _rebuild(self) -> None:
        routes: list[Route] = []
        seen: set[tuple[str, str]] = set()
        for upstream in self.upstreams.values():  # earlier upstreams win a clash
            for route in upstream.routes:
                key = (route.http_method, route.template.regex.pattern)
                if key in seen:
                    log.warning("route %s of %s is served by an earlier upstream", route, upstream.name)
                    continue
                seen.add(key)
                routes.append(route)
        routes.sort(key=lambda route: -route.template.literal_segments)
        self.routes = routes

    def match(self, method: str, raw_path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """The route for a request and its path values; else the methods the path allows.

        A HEAD takes the GET route (RFC 9110 §9.3.2: what GET would answer, without the body,
        which aiohttp leaves out of any answer to a HEAD)."""
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route in self.routes:
            values = route.template.match(raw_path)
            if values is None:
                continue
            if route.http_method == wanted:
                return route, values, []
            allowed.append(route.http_method)
        if "GET" in allowed:
            allowed.append("HEAD")
        return None, {}, sorted(set(allowed))

    def comments(self) -> dict[str, str]:
        """The comments of every upstream's protos, by full name."""
        merged: dict[str, str] = {}
        for upstream in self.upstreams.values():
            merged.update(upstream.comments)
        return merged

    def undiscovered(self) -> list[str]:
        return [name for name, upstream in self.upstreams.items() if not upstream.discovered]

    async def discover_all(self) -> None:
        await asyncio.gather(*(upstream.try_discover() for upstream in self.upstreams.values()))

    def start_watching(self) -> None:
        for upstream in self.upstreams.values():
            upstream.start_watching()

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()
