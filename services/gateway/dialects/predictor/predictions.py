"""PredictionService: the hosted predictor's prediction API, translated into background generations.

The official ``replicate`` Python client (REPLICATE_BASE_URL = the gateway,
REPLICATE_API_TOKEN = an API key) works unchanged: ``replicate.run("nari-labs/dia",
input={...})``, ``predictions.create/get/list/cancel``, ``models.get``.

A prediction is a generation: its input is checked with the model page's
rules and translated (inputs.py), admitted by the pipeline into the same
history, and generated as a background job (generation/jobs.py: durable,
resumed by another gateway if its own stops, cancellable from any replica)
whatever the HTTP request does: ``Prefer: wait`` only waits for it. Its
``audio_prompt`` becomes a voice sample of the caller
(generation/audio_inputs.py), so the library's speech recognition writes the
transcript Dia needs. What only the predictor's client needs (the model and
version it named, its input as sent, its webhook) is kept beside the
generation (store/predictions.py).

``urls.stream`` (WatchPrediction, over HTTP through StreamPredictionEvents'
stream_method) sends the prediction's progress as the predictor's
server-sent events, read from its row every STREAM_POLL_SECONDS, so that any
replica serves it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from typing import AsyncIterator, Mapping

from google.api import httpbody_pb2
from google.protobuf import json_format

from runtime.callers import Caller
from runtime.errors import ApiError, invalid_parameter, not_found
from services.gateway.accounts import Accounts
from services.gateway.config import PREDICTION_MAX_WAIT_SECONDS, PREDICTIONS_PAGE_SIZE, SYNTH_TIMEOUT_SECONDS
from services.gateway.dialects.predictor import inputs, webhooks
from services.gateway.dialects.predictor.models import Models, generation_model, model_card, model_version, version_id
from services.gateway.generation.audio_inputs import AudioInputs
from services.gateway.generation.audio_urls import AudioUrls
from services.gateway.generation.jobs import LEASE_SECONDS, Jobs
from services.gateway.generation.pipeline import Pipeline
from services.gateway.store.predictions import PredictionsTable
from voice.predictor.v1 import predictions_pb2, predictions_pb2_grpc

PREFER_METADATA = "prefer"
STATUSES = {"queued": "starting", "running": "processing", "succeeded": "succeeded", "failed": "failed", "canceled": "canceled"}
# urls.stream reads the stored prediction this often (so any gateway serves it).
STREAM_POLL_SECONDS = 0.5
# A stream with nothing new this long sends a comment, so that clients' read timeouts (the predictor's: 30 s) wait on.
STREAM_KEEPALIVE_SECONDS = 15.0
# A stream follows a prediction until GATEWAY_SYNTH_TIMEOUT_SECONDS after its creation plus this.
STREAM_MARGIN_SECONDS = LEASE_SECONDS
SSE = "text/event-stream"
_WAIT = re.compile(r"\s*wait\s*(?:=\s*([0-9]{1,6}))?\s*")


def wait_seconds(prefer: str, most: float) -> float:
    """How long ``Prefer`` asks to wait: "wait" the most allowed, "wait=N" N seconds (at most that); 0: answer at once."""
    for preference in prefer.split(","):
        match = _WAIT.fullmatch(preference)
        if match:
            return min(float(match.group(1)), most) if match.group(1) else most
    return 0.0


class PredictionService(predictions_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self,
        accounts: Accounts,
        pipeline: Pipeline,
        jobs: Jobs,
        predictions: PredictionsTable,
        audio_inputs: AudioInputs,
        models: Models,
        urls: AudioUrls,
    ) -> None:
        self.accounts = accounts
        self.pipeline = pipeline
        self.jobs = jobs
        self.predictions = predictions
        self.audio_inputs = audio_inputs
        self.models = models
        self.urls = urls

    # --- creating ---------------------------------------------------------------

    async def CreatePrediction(self, request, context):
        caller = await self.accounts.principal(context)
        if not request.version:
            raise invalid_parameter("version", "version is required: a version id, or \"owner/name\" of a model")
        model = await self.models.of_version(request.version)
        prediction = await self._create(caller, model, request, context)
        return predictions_pb2.CreatePredictionResponse(prediction=prediction)

    async def CreateModelPrediction(self, request, context):
        caller = await self.accounts.principal(context)
        model = await self.models.named(f"{request.owner}/{request.name}")
        prediction = await self._create(caller, model, request, context)
        return predictions_pb2.CreateModelPredictionResponse(prediction=prediction)

    async def _create(self, caller: Caller, model: str, request, context) -> predictions_pb2.Prediction:
        account_id = caller.account_id
        if not request.HasField("input"):
            raise invalid_parameter("input", "input is required: the model's input, at least {\"text\": ...}")
        events = webhooks.events_filter(list(request.webhook_events_filter))
        if request.webhook:
            webhooks.check_target(request.webhook)
        wait = wait_seconds(
            dict(context.invocation_metadata() or ()).get(PREFER_METADATA, ""), PREDICTION_MAX_WAIT_SECONDS.value
        )
        given = request.input
        inputs.checked(given)
        reference = given.audio_prompt.strip()
        voice = (
            await self.audio_inputs.sample_of(account_id, reference, inputs.AUDIO_PROMPT, caller.key_id)
            if reference
            else None
        )
        spec = inputs.generation_spec(given, generation_model(model), voice)
        admitted = await self.pipeline.admit(
            account_id, spec, rules=False, names=inputs.PUBLIC_NAMES, key_id=caller.key_id
        )
        await self.predictions.add(
            admitted.generation_id,
            model,
            version_id(model),
            json_format.MessageToDict(given, preserving_proto_field_name=True),
            request.webhook,
            events,
        )
        task = await self.jobs.submit(admitted)
        if wait > 0:
            await self.jobs.wait(task, wait)
        return await self._get(account_id, admitted.generation_id)

    # --- reading ----------------------------------------------------------------

    async def GetPrediction(self, request, context):
        account_id = await self.accounts.caller(context)
        return predictions_pb2.GetPredictionResponse(prediction=await self._get(account_id, request.id))

    async def _get(self, account_id: int, prediction_id: str) -> predictions_pb2.Prediction:
        return to_prediction(await self.predictions.get(account_id, prediction_id), self.urls)

    async def WatchPrediction(self, request, context):
        account_id = await self.accounts.caller(context)
        async for events in self._events(account_id, request.id, context.time_remaining()):
            yield predictions_pb2.WatchPredictionResponse(events=httpbody_pb2.HttpBody(content_type=SSE, data=events))

    async def StreamPredictionEvents(self, request, context):
        """Over gRPC the same events in one answer, once the prediction has ended (HTTP streams them)."""
        account_id = await self.accounts.caller(context)
        events = [chunk async for chunk in self._events(account_id, request.id, context.time_remaining())]
        return predictions_pb2.StreamPredictionEventsResponse(
            events=httpbody_pb2.HttpBody(content_type=SSE, data=b"".join(events))
        )

    async def _events(self, account_id: int, prediction_id: str, time_left: float | None) -> AsyncIterator[bytes]:
        """The prediction's server-sent events, read from its row (NOT_FOUND for none of the caller's)."""
        prediction = await self._get(account_id, prediction_id)
        # Until the prediction's own deadline (plus a margin), and before the call's runs out.
        created = prediction.created_at.ToDatetime(tzinfo=datetime.timezone.utc)
        deadline_in = (created - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        deadline_in += SYNTH_TIMEOUT_SECONDS.value + STREAM_MARGIN_SECONDS
        if time_left is not None:
            deadline_in = min(deadline_in, time_left - 1.0)
        ends = time.monotonic() + max(deadline_in, 0.0)
        events = SseEvents()
        quiet_since = time.monotonic()
        sent_logs: list[str] = []
        while True:
            new_lines = [line for line in prediction.logs.splitlines() if line not in sent_logs]
            chunk = b""
            if new_lines:
                sent_logs += new_lines
                chunk += events.event("logs", "\n".join(new_lines))
            if prediction.status in ("succeeded", "failed", "canceled"):
                yield chunk + events.final(prediction)
                return
            if chunk:
                quiet_since = time.monotonic()
                yield chunk
            elif time.monotonic() - quiet_since >= STREAM_KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield b": still " + prediction.status.encode() + b"\n\n"
            if time.monotonic() >= ends:
                yield events.event(
                    "error", f"the stream's time ran out while the prediction was {prediction.status}; "
                    f"follow it at {prediction.urls.get}"
                ) + events.event("done", json.dumps({"reason": "error"}))
                return
            await asyncio.sleep(STREAM_POLL_SECONDS)
            try:
                prediction = await self._get(account_id, prediction_id)
            except ApiError as error:  # the database is down, or the prediction was deleted
                yield events.event("error", error.message) + events.event("done", json.dumps({"reason": "error"}))
                return

    async def ListPredictions(self, request, context):
        account_id = await self.accounts.caller(context)
        page_size = PREDICTIONS_PAGE_SIZE.value
        rows = await self.predictions.page(account_id, _decode_cursor(request.cursor), page_size)
        base = self.urls.base()
        answer = predictions_pb2.ListPredictionsResponse(results=[to_prediction(row, self.urls) for row in rows[:page_size]])
        if len(rows) > page_size:
            answer.next = f"{base}/v1/predictions?cursor={_encode_cursor(rows[page_size - 1]['seq'])}"
        return answer

    async def CancelPrediction(self, request, context):
        account_id = await self.accounts.caller(context)
        await self._get(account_id, request.id)  # 404 for another account's
        await self.jobs.cancel(request.id)
        return predictions_pb2.CancelPredictionResponse(prediction=await self._get(account_id, request.id))

    # --- models -----------------------------------------------------------------

    async def GetPredictionModel(self, request, context):
        await self.accounts.caller(context)
        model = await self.models.named(f"{request.owner}/{request.name}")
        return predictions_pb2.GetPredictionModelResponse(model=model_card(model, self.urls.base()))

    async def GetPredictionModelVersion(self, request, context):
        await self.accounts.caller(context)
        model = await self.models.named(f"{request.owner}/{request.name}")
        if request.version_id != version_id(model):
            raise not_found(f"model {model} has no version {request.version_id[:100]!r}")
        return predictions_pb2.GetPredictionModelVersionResponse(version=model_version(model))


# --- the rows -------------------------------------------------------------------


def to_prediction(row: Mapping, urls: AudioUrls) -> predictions_pb2.Prediction:
    base = urls.base()
    prediction = predictions_pb2.Prediction(
        id=row["id"],
        model=row["predicted_model"],
        version=row["version"],
        status=STATUSES[row["status"]],
        input=json_format.ParseDict(json.loads(row["input"]), predictions_pb2.PredictionInput()),
        logs=logs(row),
        source="api",
        urls=predictions_pb2.PredictionUrls(
            get=f"{base}/v1/predictions/{row['id']}",
            cancel=f"{base}/v1/predictions/{row['id']}/cancel",
            stream=f"{base}/v1/predictions/{row['id']}/stream",
        ),
    )
    if row["status"] == "succeeded":
        # Signed, so that the client (and anyone it hands the URL to) fetches it without the key.
        prediction.output = urls.audio_url(row["id"], row["url_epoch"])
    if row["status"] == "failed":
        prediction.error = f"{row['error_type']}: {row['error_message']}"
    if row["start_time"] is not None and row["end_time"] is not None:
        prediction.metrics.predict_time = (row["end_time"] - row["start_time"]).total_seconds()
    if row["start_time"] is not None:
        prediction.metrics.max_new_tokens = json.loads(row["parameters"]).get("maxNewTokens", 0)
    for column, field in (("create_time", "created_at"), ("start_time", "started_at"), ("end_time", "completed_at")):
        if row[column] is not None:
            getattr(prediction, field).FromDatetime(row[column])
    return prediction


class SseEvents:
    """A prediction stream's server-sent events, as the predictor's client reads them: each
    has an event type (output, logs, error, done) and an id (which the client needs)."""

    def __init__(self) -> None:
        self.count = 0

    def event(self, kind: str, data: str) -> bytes:
        self.count += 1
        lines = "".join(f"data: {line}\n" for line in data.split("\n"))
        return f"event: {kind}\nid: {self.count}\n{lines}\n".encode()

    def final(self, prediction: predictions_pb2.Prediction) -> bytes:
        """How an ended prediction's stream ends."""
        if prediction.status == "succeeded":
            return self.event("output", prediction.output) + self.event("done", "{}")
        if prediction.status == "failed":
            return self.event("error", prediction.error) + self.event("done", json.dumps({"reason": "error"}))
        return self.event("done", json.dumps({"reason": "canceled"}))


def logs(row: Mapping) -> str:
    """Progress lines, from what the row records."""
    lines = ["queued: checking the input and preparing the voice prompt"]
    if row["resumes"]:
        lines.append(f"its gateway stopped: generating it again from its input (take {row['resumes'] + 1})")
    if row["start_time"] is not None:
        lines.append(f"generating on provider {row['provider'] or '?'} with model {row['model'] or '?'}")
    if row["status"] == "succeeded":
        lines.append(f"generated {row['audio_duration_seconds']:.2f} s of audio")
        if row["analysis"] is not None:
            lines.append(analysis_line(json.loads(row["analysis"])))
    elif row["status"] in ("failed", "canceled"):
        lines.append(f"{row['status']}: {row['error_message']}")
    return "\n".join(lines) + "\n"


def analysis_line(analysis: dict) -> str:
    """What speech recognition made of the output (README: "Generation analysis"), as a log line; the
    word and turn timings are in the history (GET /v1/voice/generations/{id}) and its captions."""
    words = analysis.get("words", [])
    heard = sum(1 for word in words if word.get("heard"))
    parts = [f"heard {heard} of {len(words)} script words (word error rate {analysis.get('wordErrorRate', 0):.2f})"]
    similarity = analysis.get("voiceSimilarity", {})
    if similarity:
        parts.append("voice similarity " + ", ".join(f"{tag} {value:.2f}" for tag, value in sorted(similarity.items())))
    chosen = [candidate for candidate in analysis.get("candidates", []) if candidate.get("chosen")]
    if chosen:
        parts.append(f"best of {len(analysis['candidates'])}: seed {chosen[0].get('seed', 0)} chosen")
    return "; ".join(parts)


def _encode_cursor(seq: int) -> str:
    return f"p{seq}"


def _decode_cursor(cursor: str) -> int | None:
    if not cursor:
        return None
    if not re.fullmatch(r"p[0-9]{1,18}", cursor):
        raise invalid_parameter("cursor", "cursor is not valid: follow the \"next\" URL of the previous page")
    return int(cursor[1:])
