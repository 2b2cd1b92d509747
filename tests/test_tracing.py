"""Tracing across the mesh (runtime/tracing.py), for real: an OTLP/HTTP receiver of the test's own,
a mesh of real processes pointed at it with the OpenTelemetry SDK's standard variables, and the
traces it receives (decoded with opentelemetry-proto), one per request, with correct parent links."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from runtime import tracing
from tests.conftest import Database, RunningMesh, free_port, mesh_ports_env
from tests.gateway.conftest import FOX, HELLO, Account, extra_gateway, make_key, upload_form, wait_for_models
from tests.gateway.test_long_scripts import dialogue
from tools import mesh as mesh_tools

SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."
SERVER, CLIENT = 2, 3  # OTLP's span kinds


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict
    status: int  # 0 unset, 1 ok, 2 error
    start: float  # seconds since the epoch


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: what POST /v1/traces brought, by trace id."""

    traces: dict[str, list[Span]] = field(default_factory=lambda: collections.defaultdict(list))
    bodies: list[bytes] = field(default_factory=list)
    hooks: int = 0  # webhook deliveries received (POST /hook)

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.hooks += 1
        return web.Response(status=204)

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        self.bodies.append(body)
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.traces[span.trace_id.hex()].append(
                        Span(
                            resource["service.name"], span.name, span.trace_id.hex(), span.span_id.hex(),
                            span.parent_span_id.hex(), span.kind, {a.key: _value(a.value) for a in span.attributes},
                            span.status.code, span.start_time_unix_nano / 1e9,
                        )  # fmt: skip
                    )
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def trace(self, trace_id: str, complete, timeout: float = 30) -> list[Span]:
        """The trace's spans once `complete(spans)` holds and every parent named has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            spans = list(self.traces.get(trace_id, ()))
            ids = {span.span_id for span in spans}
            roots = [span for span in spans if not span.parent_id or span.parent_id not in ids]
            if spans and len(roots) == 1 and complete(spans):
                return spans
            if time.monotonic() > deadline:
                pytest.fail(f"trace {trace_id} incomplete: {[(s.service, s.name, s.parent_id) for s in spans]}")
            await asyncio.sleep(0.1)


def _value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def by_name(spans: list[Span]) -> dict[str, list[Span]]:
    named = collections.defaultdict(list)
    for span in spans:
        named[span.name].append(span)
    return named


def parent_of(span: Span, spans: list[Span]) -> Span:
    (parent,) = [other for other in spans if other.span_id == span.parent_id]
    return parent


def assert_rpc_links(spans: list[Span]) -> None:
    """Every RPC's server span is the child of its client span, of the same method, in the caller."""
    for span in spans:
        if span.kind == SERVER and span.attributes.get("rpc.system") == "grpc" and span.parent_id:
            parent = parent_of(span, spans)
            if parent.kind == CLIENT:
                assert parent.name == span.name, (parent, span)
                assert parent.service != span.service or span.service == "gateway", (parent, span)


@pytest.fixture(scope="module")
async def receiver():
    found = Receiver()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", found.receive)
    app.router.add_post("/hook", found.hook)  # and a prediction's webhook
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}"
    yield found
    await runner.cleanup()


@pytest.fixture(scope="module")
async def own_database(database):
    """A database of this module's own on the session's server. The mesh's providers and jobs are
    found through the database: on the session's, the gateway would route generations to the synth
    providers (and hand prediction jobs to the gateways) of other tests' meshes, untraced."""
    own = Database()
    own.admin_url = database.admin_url
    await own.create()
    yield own
    await own.drop()


@pytest.fixture(scope="module")
async def traced(own_database, object_server, receiver):
    """Every service, its spans sent to the receiver, as the OpenTelemetry variables say."""
    env = mesh_tools.mesh_environment(own_database.url, object_store=object_server.settings.environment())
    env.update(mesh_ports_env())
    env.update(
        {
            "LOG_FORMAT": "json",
            "DIA_MODEL": "tiny-random",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: the test need not wait for the default 5 s
            "GATEWAY_WEBHOOK_ALLOW_LIST": f"{receiver.url}/hook",
        }
    )
    running = RunningMesh(mesh_tools.existing_services(), env)
    running.echo = bool(os.environ.get("MESH_ECHO"))
    try:
        await running.start(timeout=180)
    except BaseException:
        await running.stop()
        raise
    yield running
    await running.stop()


@pytest.fixture(scope="module")
def account(own_database) -> Account:
    name = f"traced-{secrets.token_hex(4)}"
    return Account(name, make_key(name, {**os.environ, "DATABASE_URL": own_database.url}))


@pytest.fixture(scope="module")
async def http(traced, account):
    async with aiohttp.ClientSession(base_url=traced.http_url) as session:
        await wait_for_models(session, account)
        while (await session.get("/readyz")).status != 200:  # every upstream reachable from the gateway
            await asyncio.sleep(0.2)
        yield session


@pytest.fixture(scope="module")
async def voices(http, account) -> dict[str, str]:
    """Two cloned voices, uploaded with their transcripts."""
    speakers = {}
    for speaker, audio, transcript in (
        ("S1", HELLO, "Hello world, this is a voice sample for testing."),
        ("S2", FOX, "The quick brown fox jumps over the lazy dog."),
    ):
        response = await upload_form(http, account, audio, speaker, transcript=transcript)
        assert response.status == 200, await response.text()
        speakers[speaker] = (await response.json())["id"]
    return speakers


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variables, wanted",
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # nowhere to send spans
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_say_where_spans_go(monkeypatch, variables, wanted):
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert tracing.wanted() is wanted


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"])
def test_a_protocol_other_than_otlp_http_stops_the_service_with_a_reason(monkeypatch, variable):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv(variable, "grpc")
    with pytest.raises(SystemExit, match=f"{variable}=grpc: .*OTLP/HTTP only"):
        tracing.setup("gateway")
    assert not tracing.ENABLED


def test_a_traceparent_gives_its_trace_id_as_request_id_and_anything_else_none():
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.request_id_of(f"00-{trace_id}-00f067aa0ba902b7-01") == trace_id
    assert tracing.request_id_of(f"00-{trace_id.upper()}-00f067aa0ba902b7-00") == trace_id
    zeros, short = "00-" + "0" * 32 + "-00f067aa0ba902b7-01", f"00-{trace_id[:-1]}-00f067aa0ba902b7-01"
    for refused in ("", "garbage", zeros, short):
        assert tracing.request_id_of(refused) is None


# --- one trace per request -----------------------------------------------------------------------


async def test_an_upload_without_transcript_is_one_trace_through_gateway_library_transcode_and_stt(
    http, account, receiver, traced
):
    response = await upload_form(http, account, HELLO, "S1")
    body = await response.json()
    assert response.status == 200, (body, traced.log_lines["library"][-20:], traced.log_lines["gateway"][-20:])
    trace_id = response.headers["X-Request-Id"]

    def complete(spans):
        services = {span.service for span in spans}
        names = by_name(spans)
        return {"gateway", "library", "transcode", "stt"} <= services and "stt.recognize" in names and any(
            name.endswith("/CheckSample") for name in names
        )

    spans = await receiver.trace(trace_id, complete)
    (root,) = [span for span in spans if not span.parent_id]
    assert (root.service, root.name, root.kind) == ("gateway", "POST /v1/voice/samples", SERVER)
    assert root.attributes["http.response.status_code"] == 200
    named = by_name(spans)
    assert parent_of(named["gateway.auth"][0], spans) is root
    assert parent_of(named["gateway.transcode_request"][0], spans) is root
    # The library's upload, called by the gateway; the library asks STT for the transcript and its
    # word timings and, at once, for a check of the sample; STT asks transcode.
    (upload,) = [s for s in spans if s.service == "library" and s.kind == SERVER]
    stt_calls = {s.name: s for s in spans if s.service == "stt" and s.kind == SERVER}
    assert set(stt_calls) == {"voice.stt.v1.SttService/Transcribe", "voice.stt.v1.SttService/CheckSample"}
    assert all(_descends(call, upload, spans) for call in stt_calls.values())
    transcribe = stt_calls["voice.stt.v1.SttService/Transcribe"]
    assert parent_of(named["stt.recognize"][0], spans) is transcribe
    assert any(s.service == "transcode" and s.kind == SERVER for s in spans)
    assert_rpc_links(spans)
    # Statements of the database, as the asyncpg instrumentation names them, without their parameters.
    statements = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    assert statements and all("db.statement.parameters" not in s.attributes for s in statements)
    # The request's own statements alone: not asyncpg's reset of each connection the pool takes back.
    assert not [s for s in statements if "pg_advisory_unlock_all" in s.attributes.get("db.statement", "")]
    # The request id is the trace id, in the log lines the request made (transcode writes none for it).
    for service in ("gateway", "library", "stt"):
        assert any(trace_id in line for line in traced.log_lines[service]), service


def _descends(span: Span, ancestor: Span, spans: list[Span]) -> bool:
    ids = {s.span_id: s for s in spans}
    while span.parent_id in ids:
        span = ids[span.parent_id]
        if span.span_id == ancestor.span_id:
            return True
    return False


async def test_a_callers_traceparent_is_honoured_and_its_trace_id_is_the_request_id(http, account, receiver):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = {**account.headers, "traceparent": f"00-{trace_id}-{parent_id}-01"}
    response = await http.get("/v1/voice/samples", headers=headers)
    assert response.status == 200
    assert response.headers["X-Request-Id"] == trace_id
    spans = await receiver.trace(trace_id, lambda spans: any(s.service == "library" for s in spans))
    (root,) = [span for span in spans if span.parent_id == parent_id]
    assert (root.service, root.name) == ("gateway", "GET /v1/voice/samples")


async def test_a_generation_with_two_cloned_voices_is_one_trace_down_to_the_decode_steps(
    http, account, voices, receiver
):
    body = {"input": SCRIPT, "speakers": voices, "max_new_tokens": 256}
    traces = []
    for _ in range(2):  # the second one's prompt comes from the cache
        response = await http.post("/v1/voice/generations", json=body, headers=account.headers)
        assert response.status == 200, await response.text()
        await response.read()
        traces.append(response.headers["X-Request-Id"])

    def complete(spans):
        return {"synth.tempo", "synth.codec", "synth.voice_prompt"} <= set(by_name(spans))

    spans = await receiver.trace(traces[0], complete)
    named = by_name(spans)
    assert {span.service for span in spans} >= {"gateway", "library", "synth"}
    (synthesize,) = [s for s in spans if s.service == "synth" and s.kind == SERVER]
    assert synthesize.name == "voice.synth.v1.SynthService/Synthesize"
    assert parent_of(synthesize, spans).service == "gateway"
    # Synth's phases, each a child of its RPC, in order, the decode steps one span with their counts.
    for phase in ("synth.queue", "synth.prefill", "synth.decode", "synth.codec", "synth.tempo"):
        (span,) = named[phase]
        assert parent_of(span, spans) is synthesize, phase
    decode = named["synth.decode"][0].attributes
    assert decode["synth.steps"] > 10 and decode["synth.batch_size.max"] >= 1
    # Synth makes the voice prompt: on a miss it fetches both samples from the library in one call,
    # below that span; the library's reads of their audio and rows below that call.
    (prompt,) = named["synth.voice_prompt"]
    assert prompt.attributes["prompt.cache"] == "miss"
    assert parent_of(prompt, spans) is synthesize
    (fetch,) = [s for s in spans if s.service == "library" and s.kind == SERVER and "PromptSample" in s.name]
    assert fetch.name == "voice.library.v1.PromptSampleService/BatchGetPromptSamples"
    assert parent_of(parent_of(fetch, spans), spans) is prompt  # the library's server span under synth's client span
    assert any(s.attributes.get("db.system") == "postgresql" and parent_of(s, spans) is fetch for s in spans)
    assert_rpc_links(spans)

    cached = await receiver.trace(traces[1], complete)
    assert by_name(cached)["synth.voice_prompt"][0].attributes["prompt.cache"] == "hit"
    assert not [s for s in cached if "PromptSample" in s.name]
    assert traces[0] != traces[1]


async def test_a_streamed_generation_is_one_trace(http, account, voices, receiver):
    body = {"input": SCRIPT, "speakers": voices, "max_new_tokens": 256, "stream": True}
    response = await http.post("/v1/voice/generations", json=body, headers=account.headers)
    assert response.status == 200
    assert (await response.read())[:4] == b"RIFF"
    trace_id = response.headers["X-Request-Id"]

    def complete(spans):
        return "synth.decode" in by_name(spans) and any(
            s.name.endswith("StreamSynthesize") and s.service == "synth" for s in spans
        )

    spans = await receiver.trace(trace_id, complete)
    (stream,) = [s for s in spans if s.service == "synth" and s.kind == SERVER]
    assert stream.name == "voice.synth.v1.SynthService/StreamSynthesize"
    assert parent_of(by_name(spans)["synth.decode"][0], spans) is stream
    (root,) = [span for span in spans if not span.parent_id]
    assert root.name == "POST /v1/voice/generations"
    assert_rpc_links(spans)


async def test_a_prediction_and_its_background_job_are_one_trace(http, account, receiver):
    response = await http.post(
        "/v1/models/nari-labs/dia/predictions",
        json={"input": {"text": "[S1] Hello there. [S2] Hi!", "max_new_tokens": 500}},  # the predictor's least
        headers={**account.headers, "Prefer": "wait"},
    )
    prediction = await response.json()
    assert response.status in (200, 201), prediction
    assert prediction["status"] == "succeeded", prediction
    trace_id = response.headers["X-Request-Id"]

    spans = await receiver.trace(trace_id, lambda spans: {"gateway.job", "synth.decode"} <= set(by_name(spans)))
    (job,) = by_name(spans)["gateway.job"]
    assert job.attributes["generation.id"] == prediction["id"]
    (synthesize,) = [s for s in spans if s.service == "synth" and s.kind == SERVER]
    assert _descends(synthesize, job, spans)  # the synthesis was the job's, in the request's trace


async def test_no_span_holds_a_key_or_an_authorization_header(http, account, receiver):
    response = await http.get("/v1/voice/samples", headers={"Authorization": "Bearer vm_not_a_real_key_0123456789"})
    assert response.status == 401
    spans = await receiver.trace(response.headers["X-Request-Id"], lambda spans: "gateway.auth" in by_name(spans))
    (auth,) = by_name(spans)["gateway.auth"]
    assert auth.status == 2 and auth.attributes["error.type"] == "ApiError"
    await asyncio.sleep(0.5)  # whatever else is still on its way
    everything = b"".join(receiver.bodies)
    for secret in (account.key.encode(), b"vm_not_a_real_key", b"Bearer"):
        assert secret not in everything
    for spans in receiver.traces.values():
        assert all("authorization" not in json.dumps(span.attributes).lower() for span in spans)


async def test_the_request_latency_histogram_links_to_the_trace_with_an_exemplar(http, account, traced):
    response = await http.get("/v1/voice/samples", headers=account.headers)
    assert response.status == 200
    trace_id = response.headers["X-Request-Id"]
    url = f"http://127.0.0.1:{traced.env['GATEWAY_METRICS_PORT']}/metrics"
    async with aiohttp.ClientSession() as scraper:  # as Prometheus asks with exemplar storage on
        answer = await scraper.get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        exposition = await answer.text()
    lines = [line for line in exposition.splitlines() if f'trace_id="{trace_id}"' in line]
    assert lines and all(line.startswith("http_request_duration_seconds_bucket{") for line in lines)
    assert any('route="/v1/voice/samples"' in line for line in lines)


async def test_a_prediction_taken_over_by_another_gateway_goes_on_in_its_trace(traced, http, account, receiver):
    """The job's row keeps the request's traceparent: the gateway that takes the job over (here,
    from one stopping gracefully) generates it in the same trace, under the request's RPC."""
    async with extra_gateway(traced) as stopping:
        async with aiohttp.ClientSession(base_url=stopping.http_url) as other:
            response = await other.post(
                "/v1/models/nari-labs/dia/predictions",
                json={"input": {"text": "[S1] Carry on, please.", "max_new_tokens": 4096}},
                headers=account.headers,
            )
            prediction = await response.json()
            assert response.status in (200, 201), prediction
            trace_id = response.headers["X-Request-Id"]
        handed_over = time.time()
        await stopping.stop_service("gateway", signal.SIGTERM)  # a rolling update, say
    deadline = time.monotonic() + 180
    while prediction["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, prediction
        await asyncio.sleep(0.5)
        prediction = await (await http.get(f"/v1/predictions/{prediction['id']}", headers=account.headers)).json()
    assert prediction["status"] == "succeeded", prediction

    def resumed(spans):
        return any(s.name == "gateway.job" and s.start > handed_over and s.status != 2 for s in spans)

    spans = await receiver.trace(trace_id, resumed, timeout=60)
    (job,) = [s for s in spans if s.name == "gateway.job" and s.start > handed_over and s.status != 2]
    assert parent_of(job, spans).name == "voice.predictor.v1.PredictionService/CreateModelPrediction"
    assert any(s.service == "synth" and _descends(s, job, spans) for s in spans)


async def test_a_long_scripts_chunks_and_its_webhook_are_in_the_trace_of_its_prediction(http, account, receiver):
    body = {"input": {"text": dialogue(2500), "max_new_tokens": 500}, "webhook": f"{receiver.url}/hook"}
    response = await http.post("/v1/models/nari-labs/dia/predictions", json=body, headers=account.headers)
    prediction = await response.json()
    assert response.status in (200, 201), prediction
    trace_id = response.headers["X-Request-Id"]

    def complete(spans):  # each service sends its spans in its own batches: the synth's may come last
        named = by_name(spans)
        synthesized = [s for s in spans if s.service == "synth" and s.name.endswith("/StreamSynthesize")]
        return (
            len(named["gateway.chunk"]) >= 3
            and len(synthesized) >= len(named["gateway.chunk"])
            and "gateway.webhook" in named
            and "gateway.job" in named
        )

    spans = await receiver.trace(trace_id, complete, timeout=180)
    named = by_name(spans)
    (job,) = named["gateway.job"]
    chunks = sorted(named["gateway.chunk"], key=lambda span: span.attributes["chunk.index"])
    assert [chunk.attributes["chunk.index"] for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:  # each chunk's synthesis, under its chunk, under the job
        assert parent_of(chunk, spans) is job
        (synthesis,) = [s for s in spans if s.service == "synth" and s.kind == SERVER and _descends(s, chunk, spans)]
        assert synthesis.name == "voice.synth.v1.SynthService/StreamSynthesize"
    webhooks = named["gateway.webhook"]  # the events "start" and "completed", each delivered
    assert len(webhooks) == 2 and all(webhook.status != 2 for webhook in webhooks) and receiver.hooks >= 2
    assert all(receiver.url not in json.dumps(span.attributes) for span in spans)  # never the webhook's URL


async def test_a_request_whose_caller_does_not_sample_it_works_and_sends_no_span(http, account, voices, receiver):
    """A traceparent whose sampled flag is off (or a ratio sampler's no) is followed: no span of it goes
    out, and everything works as untraced (synth's phases included, streamed or not)."""
    trace_id = secrets.token_hex(16)
    headers = {**account.headers, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-00"}
    for stream in (False, True):
        body = {"input": SCRIPT, "speakers": voices, "max_new_tokens": 256, "stream": stream}
        async with asyncio.timeout(120):
            response = await http.post("/v1/voice/generations", json=body, headers=headers)
            assert response.status == 200, await response.text()
            assert (await response.read())[:4] == b"RIFF"
        assert response.headers["X-Request-Id"] == trace_id
    await asyncio.sleep(1)  # what would have been sent by now
    assert trace_id not in receiver.traces
