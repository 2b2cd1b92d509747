"""Server bootstrap shared by every service.

A service describes itself with a :class:`ServiceSpec` (its servicers and its
start/stop hooks) and calls :func:`main`. This module then:

* runs a ``grpc.aio`` server on ``<NAME>_GRPC_PORT`` with the standard
  ``grpc.health.v1`` service, server reflection, and
  ``voice.api.v1.LimitsService``, which publishes the spec's ``limits``
  (runtime/limits.py): the same limits runtime.fields checks requests against
  in this process. A service whose protos name a limit its spec does not
  publish does not start;
* keeps health NOT_SERVING until ``on_start`` has returned (model loaded,
  database reachable). After that the server as a whole (service name "")
  stays SERVING until shutdown: it is alive, which is what a liveness probe
  asks. The named services follow the spec's ``readiness`` probe, if it has
  one: NOT_SERVING while it fails (database down), which is what a readiness
  probe and the gateway's /readyz ask. A servicer may have a probe of its own
  besides (the gateway's generations are not ready while no synth provider is
  online), which holds back that service alone, from the start;
* wraps every RPC in one interceptor that sets the request id for logs (and
  the method served, runtime.callers.CURRENT_METHOD, for key checks),
  records Prometheus metrics and, with tracing on, a span (runtime/tracing.py:
  the caller's ``traceparent`` its parent), refuses a request with a NUL
  character in any string (runtime.fields.refuse_nul) before its handler sees it, and turns
  exceptions into ``google.rpc.Status``
  (an :class:`~runtime.errors.ApiError` as it is, anything else as INTERNAL
  without its traceback, which is logged instead);
* serves reflection with our protos' comments (gen_protos.py keeps them in
  ``voice/descriptors.binpb``; generated code drops them), so that the
  gateway can publish them in /openapi.json;
* serves Prometheus metrics over HTTP on ``<NAME>_METRICS_PORT`` (runtime/metrics.py);
* listens with mutual TLS when the GRPC_TLS_* settings are set (runtime/tls.py);
  with ``GRPC_HEALTH_PORT`` set it also answers health checks alone in
  plaintext there, for probes that speak no TLS;
* on SIGTERM/SIGINT sets health NOT_SERVING, lets in-flight calls finish
  within ``SHUTDOWN_GRACE_SECONDS``, runs ``on_stop`` and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import inspect
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import grpc
import prometheus_client
from google.protobuf import descriptor_pb2, descriptor_pool, message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import callers, config, fields, limits, logs, metrics, tls, tracing
from runtime.errors import ApiError, internal_error
from voice.api.v1 import limits_pb2_grpc

log = logging.getLogger("runtime.server")

RPC_HANDLED = prometheus_client.Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = prometheus_client.Histogram(
    "grpc_server_handling_seconds",
    "Time to serve an RPC, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SERVING = prometheus_client.Gauge(
    "grpc_health_serving",
    "1 while the named service reports SERVING in health (what readiness probes ask), else 0.",
    ["grpc_service"],
)


@dataclass
class Servicer:
    """One gRPC service implementation and the generated function that adds it."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    implementation: Any
    full_name: str  # "voice.transcode.v1.TranscodeService", as published in health and reflection
    # This service's own readiness, on top of the spec's; polled with it, and
    # a probe that several servicers share runs once a round.
    readiness: Callable[[], Awaitable[bool]] | None = None


@dataclass
class ServiceSpec:
    name: str  # "transcode": selects the <NAME>_* port settings
    servicers: list[Servicer]
    # Runs once the port is bound; health turns SERVING when it returns.
    on_start: Callable[[], Awaitable[None]] | None = None
    # Runs after the server has stopped taking calls.
    on_stop: Callable[[], Awaitable[None]] | None = None
    # Polled every few seconds once started; False turns health NOT_SERVING until it passes again.
    readiness: Callable[[], Awaitable[bool]] | None = None
    readiness_interval_seconds: float = 5.0
    extra_options: list[tuple[str, Any]] = field(default_factory=list)
    # Runs when a stop signal arrives, before the server stops taking calls
    # (a provider leaves its registry here, so no new work is routed to it).
    on_shutdown: Callable[[], Awaitable[None]] | None = None
    # The limits it publishes, by name ("speaker_name_chars"), each the setting that holds its
    # value: the names its protos give (voice.api.v1.field's max_length_limit, voice.api.v1.method's
    # deadline_limit), and any others its callers may want to know.
    limits: Mapping[str, config.Setting] = field(default_factory=dict)


class MeshInterceptor(grpc.aio.ServerInterceptor):
    """Request id, metrics, the NUL rule and error mapping for every RPC."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        metadata = dict(details.invocation_metadata or ())
        request_id = (
            metadata.get(logs.REQUEST_ID_HEADER)
            or tracing.request_id_of(metadata.get(tracing.TRACEPARENT, ""))
            or uuid.uuid4().hex
        )

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request, context):
                with RpcCall(service, method, request_id, metadata) as call:
                    try:
                        _refuse_nul(request)
                        return await inner(request, context)
                    except BaseException as error:  # noqa: BLE001 - mapped, re-raised or aborted below
                        await call.fail(error, context)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary_response,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner = handler.unary_stream or handler.stream_stream

        async def streaming_response(request, context):
            with RpcCall(service, method, request_id, metadata) as call:
                try:
                    _refuse_nul(request)
                    # Closed at once when the caller goes away, so the handler's clean-up runs now.
                    async with contextlib.aclosing(inner(request, context)) as responses:
                        async for response in responses:
                            yield response
                except BaseException as error:  # noqa: BLE001
                    await call.fail(error, context)

        async def written_response(request, context):
            # A streaming handler may also be a coroutine that sends with
            # context.write() (grpc's own HealthServicer.Watch does).
            with RpcCall(service, method, request_id, metadata) as call:
                try:
                    _refuse_nul(request)
                    await inner(request, context)
                except BaseException as error:  # noqa: BLE001
                    await call.fail(error, context)

        if not inspect.isasyncgenfunction(inner):
            streaming_response = written_response

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            streaming_response,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _refuse_nul(request) -> None:
    """A request message (not a client stream) with a NUL in a string never reaches a handler."""
    if isinstance(request, message.Message):
        fields.refuse_nul(request)


# Probes and tools, not requests: no spans.
UNTRACED_SERVICES = {health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"}


class RpcCall:
    """The bookkeeping of one RPC: request id context, metrics, span, error status.

    `metadata` is the caller's over the network, whose traceparent is the span's parent;
    None for a call in process, whose parent is the current span."""

    def __init__(self, service: str, method: str, request_id: str, metadata: dict | None = None) -> None:
        self.service, self.method, self.request_id = service, method, request_id
        self.metadata = metadata
        self.code = grpc.StatusCode.OK
        self.span = self.span_token = None

    def __enter__(self) -> "RpcCall":
        self.token = logs.REQUEST_ID.set(self.request_id)
        self.method_token = callers.CURRENT_METHOD.set(f"/{self.service}/{self.method}")
        if tracing.ENABLED and self.service not in UNTRACED_SERVICES:
            self.span = tracing.start(
                f"{self.service}/{self.method}",
                {"rpc.system": "grpc", "rpc.service": self.service, "rpc.method": self.method},
                parent=tracing.context_of(self.metadata) if self.metadata is not None else None,
                kind=tracing.trace.SpanKind.SERVER,
            )
            self.span_token = tracing.attach(self.span)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        labels = (self.service, self.method, self.code.name)
        RPC_HANDLED.labels(*labels).inc()
        RPC_SECONDS.labels(*labels).observe(time.perf_counter() - self.started)
        if self.span is not None:
            self.span.set_attribute("rpc.grpc.status_code", self.code.value[0])
            if self.code is not grpc.StatusCode.OK:
                tracing.failed(self.span, self.code.name)
            self.span.end()
            tracing.detach(self.span_token)
        for variable, token in ((logs.REQUEST_ID, self.token), (callers.CURRENT_METHOD, self.method_token)):
            try:
                variable.reset(token)
            except ValueError:  # a stream whose caller went away is closed from another context
                pass

    def public_error(self, error: Exception) -> ApiError:
        """The error a handler raised as its caller gets it (recorded for the metrics): an ApiError as
        it is, an upstream call's status passed on, anything else INTERNAL (logged, never shown)."""
        if isinstance(error, grpc.aio.AioRpcError):  # an upstream call failed: pass its status on
            error = ApiError.from_rpc_error(error)
        if not isinstance(error, ApiError):
            log.error("unhandled error in %s/%s", self.service, self.method, exc_info=error)
            error = internal_error(f"internal error (request id {self.request_id})")
        self.code = error.code
        return error

    async def fail(self, error: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Record the error and end the call with the matching status. Always raises."""
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the caller went away
            self.code = grpc.StatusCode.CANCELLED
            raise error
        if isinstance(error, grpc.aio.AbortError):  # the handler aborted on its own
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise error
        status = self.public_error(error).to_status()
        # The status's details are trailing metadata: what the handler set there goes along.
        kept = tuple(context.trailing_metadata() or ())
        if kept:
            status = status._replace(trailing_metadata=(*kept, *status.trailing_metadata))
        await context.abort_with_status(status)


class _CommentedFiles:
    """A descriptor pool as server reflection uses it, whose answers for our
    own protos are the descriptor set with comments that gen_protos.py writes."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, commented: dict[str, descriptor_pb2.FileDescriptorProto]):
        self._pool = pool
        self._commented = commented

    def FindFileByName(self, name: str):  # noqa: N802 - the pool's interface
        return _CommentedFile(self._pool.FindFileByName(name), self._commented)

    def FindFileContainingSymbol(self, symbol: str):  # noqa: N802
        return _CommentedFile(self._pool.FindFileContainingSymbol(symbol), self._commented)

    def __getattr__(self, name: str):  # extension look-ups, as the pool answers them
        return getattr(self._pool, name)


class _CommentedFile:
    def __init__(self, file, commented: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._file = file
        self._commented = commented
        self.name = file.name

    @property
    def dependencies(self) -> list["_CommentedFile"]:
        return [_CommentedFile(dependency, self._commented) for dependency in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802
        if self.name in self._commented:
            proto.CopyFrom(self._commented[self.name])
        else:
            self._file.CopyToProto(proto)


def reflection_pool():
    """The default pool, with our protos' comments where gen_protos.py saved them."""
    try:
        raw = importlib.resources.files("voice").joinpath("descriptors.binpb").read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        return descriptor_pool.Default()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    return _CommentedFiles(descriptor_pool.Default(), {file.name: file for file in files})


HEALTH_PORT = config.setting(
    "GRPC_HEALTH_PORT",
    0,
    "port of a plaintext gRPC server that answers grpc.health.v1 checks alone, for probes that speak no "
    "TLS (Kubernetes'); 0: none. One port for every service, so for containers (one service each), not `make run`",
    config.between(0, 65535, int),
)


def channel_options() -> list[tuple[str, Any]]:
    size = config.GRPC_MAX_MESSAGE_BYTES.value
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


async def serve_health_probes(health_servicer: health.aio.HealthServicer) -> grpc.aio.Server | None:
    """A plaintext server of the health service alone on GRPC_HEALTH_PORT, when it is set.

    Kubernetes' gRPC probes speak no TLS: with mutual TLS on the service's
    port, they ask here. It answers health checks and nothing else."""
    if not HEALTH_PORT.value:
        return None
    probe_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe_server)
    probe_server.add_insecure_port(f"{config.BIND_HOST.value}:{HEALTH_PORT.value}")
    await probe_server.start()
    return probe_server


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel a background task a service started (a loop, a watcher) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def publish_limits(spec: ServiceSpec) -> None:
    """Make the spec's limits this process's; refuse to start if its protos name one it lacks."""
    missing = limits.unpublished([servicer.full_name for servicer in spec.servicers], spec.limits)
    if missing:
        named = ", ".join(f"{name} (named by {where})" for name, where in sorted(missing.items()))
        raise SystemExit(f"{spec.name} does not publish the limits its protos name: {named}")
    limits.publish(spec.limits)


async def serve(spec: ServiceSpec) -> None:
    ports = config.SERVICES[spec.name]
    publish_limits(spec)
    server = grpc.aio.server(
        interceptors=[MeshInterceptor()],
        # Without SO_REUSEPORT (gRPC's default on Linux) a second server on a port in
        # use fails to start instead of silently sharing the port with the first.
        options=channel_options() + [("grpc.so_reuseport", 0)] + spec.extra_options,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    limits_pb2_grpc.add_LimitsServiceServicer_to_server(limits.LimitsServicer(spec.limits), server)
    for servicer in spec.servicers:
        servicer.add_to_server(servicer.implementation, server)
    names = [s.full_name for s in spec.servicers]
    reflection.enable_server_reflection(
        names + [limits.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server, pool=reflection_pool()
    )

    for name in names + [""]:  # "" is the whole server
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in names:
        SERVING.labels(name).set(0)
    address = f"{config.BIND_HOST.value}:{ports.grpc_port.value}"
    credentials = tls.load()
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials.server())
    await server.start()
    probe_server = await serve_health_probes(health_servicer)
    metrics.serve(config.BIND_HOST.value, ports.metrics_port.value)
    log.info(
        "listening",
        extra={
            "grpc": address,
            "tls": "mutual" if credentials else "off",
            "metrics_port": ports.metrics_port.value,
            "health_port": HEALTH_PORT.value or None,
        },
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    async def probe(check: Callable[[], Awaitable[bool]]) -> bool:
        try:
            return bool(await check())
        except Exception:  # a failing probe means not ready, never a crash
            log.warning("readiness probe failed", exc_info=True)
            return False

    own_probes = {servicer.readiness for servicer in spec.servicers if servicer.readiness is not None}
    serving: dict[str, bool] = {}

    async def apply_readiness(overall: bool) -> None:
        """Each named service SERVING when the spec's probe and its own pass."""
        own = {check: await probe(check) for check in own_probes}
        changed: dict[bool, list[str]] = {True: [], False: []}
        for servicer in spec.servicers:
            ready = overall and own.get(servicer.readiness, True)
            if serving.get(servicer.full_name) != ready:
                if servicer.full_name in serving:  # a change, not the first setting
                    changed[ready].append(servicer.full_name)
                serving[servicer.full_name] = ready
                SERVING.labels(servicer.full_name).set(1 if ready else 0)
                await health_servicer.set(
                    servicer.full_name,
                    health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING,
                )
        for ready, services in changed.items():
            if services:  # losing readiness is worth a warning; regaining it, a note
                level = logging.INFO if ready else logging.WARNING
                log.log(level, "readiness changed", extra={"serving": ready, "services": services})

    async def start_and_watch() -> None:
        if spec.on_start is not None:
            await spec.on_start()
        await apply_readiness(overall=True)  # on_start has just checked what the spec's probe does
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("serving")
        while spec.readiness is not None or own_probes:
            await asyncio.sleep(spec.readiness_interval_seconds)
            await apply_readiness(await probe(spec.readiness) if spec.readiness is not None else True)

    starter = asyncio.create_task(start_and_watch())
    stop_waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait({starter, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
    if starter in done and starter.exception() is not None:
        log.error("start-up failed", exc_info=starter.exception())
        stop_waiter.cancel()
        await server.stop(0)
        if probe_server is not None:
            await probe_server.stop(0)
        raise SystemExit(1)
    await stop_waiter

    log.info("shutting down", extra={"grace_seconds": config.SHUTDOWN_GRACE_SECONDS.value})
    starter.cancel()
    await health_servicer.enter_graceful_shutdown()
    if spec.on_shutdown is not None:
        await spec.on_shutdown()
    await server.stop(config.SHUTDOWN_GRACE_SECONDS.value)
    if probe_server is not None:
        await probe_server.stop(0)
    if spec.on_stop is not None:
        await spec.on_stop()
    log.info("stopped")


def main(build: Callable[[], ServiceSpec]) -> None:
    """Entry point of a service's ``__main__``: logs, then serve until a signal."""
    spec = build()
    logs.setup(spec.name)
    tracing.setup(spec.name)
    asyncio.run(serve(spec))
