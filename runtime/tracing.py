"""Tracing with OpenTelemetry: one trace per request, from the HTTP edge to the decode steps.

Configured by the OpenTelemetry SDK's own environment variables alone, and off
unless one of them names where spans go:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: spans
  go there over OTLP/HTTP (protobuf), as the SDK's exporter reads them (with
  ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``..._CERTIFICATE``...);
* ``OTEL_TRACES_EXPORTER``: ``otlp`` (the same) or ``console`` (spans printed as
  JSON on stdout); ``none`` turns tracing off, as does ``OTEL_SDK_DISABLED=true``;
* ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default
  ``parentbased_always_on``), ``OTEL_BSP_*`` (the batch span processor),
  ``OTEL_SERVICE_NAME`` (default: the service's own name), ``OTEL_RESOURCE_ATTRIBUTES``.

Off, nothing is installed: no tracer provider, no database instrumentation,
and every helper here returns at its first line (``ENABLED`` is False).

The trace id is the request id (runtime/logs.py): a request that comes with a
W3C ``traceparent`` gets its trace id as request id; one without gets a new
request id, and the trace its spans start takes that id (RequestIdTraceIds).
Every log line of the request names it, and the API answers it in ``X-Request-Id``.

Database statements are traced by opentelemetry-instrumentation-asyncpg; RPCs by the mesh's
own interceptors (runtime/server.py, runtime/clients.py) with the SDK's W3C propagator (README,
"Tracing", says why not opentelemetry-instrumentation-grpc).

Spans only start inside a request: a span with no parent is kept only when it
serves one (an HTTP request at the edge, an RPC from outside the mesh);
housekeeping (leases, sweeps, heartbeats, health checks) starts none.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from runtime import logs

# True once setup() has installed a tracer provider in this process.
ENABLED = False
tracer: trace.Tracer = trace.NoOpTracer()

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = "traceparent"


def wanted() -> bool:
    """Whether the OpenTelemetry variables ask for traces (see the module's docstring)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return bool(exporter or endpoint)


def setup(service: str) -> None:
    """Install the tracer provider, its exporter and the database instrumentation, if wanted."""
    global ENABLED, tracer
    if not wanted():
        return
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = os.environ.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise SystemExit(f"{variable}={protocol}: the services send spans over OTLP/HTTP only (http/protobuf)")
    # Imported here: a process without tracing loads neither (the instrumentation patches asyncpg).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    exporters = {name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")}
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes), id_generator=RequestIdTraceIds())
    provider.sampler = RequestsOnly(provider.sampler)  # the OTEL_TRACES_SAMPLER one, for requests alone
    if "otlp" in exporters:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # a span per statement, without its parameters
    tracer = provider.get_tracer("voicemesh")
    ENABLED = True


class RequestIdTraceIds(RandomIdGenerator):
    """A new trace takes the current request id as its trace id (both are 32 hex digits), so that
    the id the API answers finds the trace; random outside a request."""

    def generate_trace_id(self) -> int:
        request_id = logs.REQUEST_ID.get()
        if _TRACE_ID.match(request_id) and request_id != "0" * 32:
            return int(request_id, 16)
        return super().generate_trace_id()


class RequestsOnly(Sampler):
    """The configured sampler, for the spans of requests: a span with no parent is dropped unless it
    is a server's (an HTTP request, an RPC from outside the mesh). So a database statement, a
    heartbeat or a lease renewal outside any request starts no trace of its own."""

    def __init__(self, configured) -> None:
        self.configured = configured

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and kind is not trace.SpanKind.SERVER:
            return SamplingResult(Decision.DROP)
        if attributes and is_pool_reset(attributes):
            return SamplingResult(Decision.DROP)
        return self.configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RequestsOnly{{{self.configured.get_description()}}}"


def is_pool_reset(attributes: Mapping[str, object]) -> bool:
    """Whether a database span is asyncpg's pool resetting a connection it takes back (its
    Connection.reset() runs "SELECT pg_advisory_unlock_all(); CLOSE ALL; ... RESET ALL" through
    execute(), which the instrumentation traces): housekeeping after every statement, as many
    spans as the request's own statements and nothing about them, so not kept."""
    statement = attributes.get("db.statement") or attributes.get("db.query.text")
    return isinstance(statement, str) and statement.startswith("SELECT pg_advisory_unlock_all()")


def request_id_of(traceparent: str) -> str | None:
    """The trace id of a W3C traceparent value, or None when it is not one."""
    match = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


_NO_SPAN = contextlib.nullcontext(None)


def span(name: str, attributes: Mapping[str, object] | None = None) -> contextlib.AbstractContextManager:
    """A span around a block, child of the current one (None when tracing is off: a shared
    do-nothing context, so that off costs a function call). An exception ends it in error with
    the exception's type alone: messages may quote what a caller sent."""
    return _span(name, attributes) if ENABLED else _NO_SPAN


@contextlib.contextmanager
def _span(name: str, attributes: Mapping[str, object] | None) -> Iterator[trace.Span]:
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as error:
            if not getattr(current, "attributes", {}).get("error.type"):  # what the block said comes first
                failed(current, error)
            raise


def start(name: str, attributes: Mapping[str, object] | None = None, parent: context.Context | None = None, kind=None):
    """A span that the caller ends (span.end()), child of `parent` or the current one; None when off."""
    if not ENABLED:
        return None
    return tracer.start_span(name, context=parent, kind=kind or trace.SpanKind.INTERNAL, attributes=attributes)


def failed(current: trace.Span | None, error: BaseException | str) -> None:
    """Mark a span failed with the error's type (an exception's class name, or a reason as given)."""
    if current is None or not current.is_recording():
        return
    kind = error if isinstance(error, str) else type(error).__name__
    current.set_attribute("error.type", kind)
    current.set_status(trace.Status(trace.StatusCode.ERROR, kind))


def traceparent() -> str:
    """The current span as a W3C traceparent value ("" when off or outside a span), to resume the
    trace later (a background job taken over by another process)."""
    if not ENABLED:
        return ""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def context_of(carrier: Mapping[str, str]) -> context.Context | None:
    """The trace context a request's headers or metadata carry (None when off)."""
    if not ENABLED:
        return None
    return propagate.extract(carrier)


@contextlib.contextmanager
def resumed(traceparent_value: str) -> Iterator[None]:
    """Work done later on behalf of a request (a background job taken over) as part of its trace,
    with its request id in the logs."""
    request_id = request_id_of(traceparent_value)
    token = logs.REQUEST_ID.set(request_id) if request_id else None
    attached = context.attach(propagate.extract({TRACEPARENT: traceparent_value})) if ENABLED else None
    try:
        yield
    finally:
        if attached is not None:
            detach(attached)
        if token is not None:
            logs.REQUEST_ID.reset(token)


def attach(current: trace.Span) -> object:
    """Make a span the current one; returns the token that detach() takes."""
    return context.attach(trace.set_span_in_context(current))


def detach(token: object) -> None:
    """Undo attach(). A stream closed from another context (its caller went away) has nothing to undo
    there, which is no error (context.detach would log one)."""
    with contextlib.suppress(ValueError):
        token.var.reset(token)  # a contextvars.Token


@contextlib.contextmanager
def using(current: trace.Span | None) -> Iterator[None]:
    """A span started with start() as the current one for a block (nothing when it is None): for
    work that an async generator does between its yields, where a `with span()` cannot stay open."""
    if current is None:
        yield
        return
    token = attach(current)
    try:
        yield
    finally:
        detach(token)


def end(current: trace.Span | None) -> None:
    """End a span started with start(), if there is one."""
    if current is not None:
        current.end()
