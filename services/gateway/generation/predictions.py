"""PredictionService: the hosted predictor's prediction API over the generation pipeline.

The official ``replicate`` Python client (REPLICATE_BASE_URL = the gateway,
REPLICATE_API_TOKEN = an API key) works unchanged: ``replicate.run("nari-labs/dia",
input={...})``, ``predictions.create/get/list/cancel``, ``models.get``.

A prediction is a generation (generations.py): it is checked with the seed's
own rules (../shared/spec/dia-model-input-schema.md, declared on
PredictionInput in predictions.proto), admitted and stored in the same
history, then generated in the background by the gateway that admitted it,
whatever the HTTP request does: ``Prefer: wait`` only waits for it. Its
``audio_prompt`` becomes a voice sample of the caller (prompt_audio.py), so
the library's speech recognition writes the transcript Dia needs and the
usual prompt assembly trims it to max_audio_prompt_seconds.

Durable and shared. The row names the gateway process running it
(``runner``) and when that process last said so (``runner_seen``, renewed
every LEASE_RENEW_SECONDS). A prediction whose runner has been silent for
LEASE_SECONDS (its gateway was killed or restarted) is taken over by any
gateway and generated again from its stored input, at most MAX_RESUMES
times, then it ends ``failed`` with ``interrupted``. A gateway stopping
gracefully hands its predictions over at once. Cancel marks the row
``canceled``; the runner sees that at its next renewal (whichever replica
was asked) and stops the generation, which stops the provider.
``urls.stream`` (WatchPrediction, over HTTP through StreamPredictionEvents'
stream_method) sends the prediction's progress as the predictor's
server-sent events, read from its row every STREAM_POLL_SECONDS, so that any
replica serves it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import re
import time
import uuid
from typing import AsyncIterator

import asyncpg
import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format

from runtime import fields
from runtime.database import connection
from runtime.errors import ApiError, invalid_parameter, not_found
from services.gateway.accounts import Accounts
from services.gateway.config import (
    MAX_INPUT_CHARS,
    PREDICTION_MAX_WAIT_SECONDS,
    PREDICTIONS_PAGE_SIZE,
    PUBLIC_URL,
    SYNTH_TIMEOUT_SECONDS,
)
from services.gateway.generation import history, parameters, prompt_audio, webhooks
from services.gateway.generation import script as scripts
from services.gateway.generation.generations import Admitted, GenerationService
from services.gateway.generation.registry import OWNER_NAME, online_models
from voice.gateway.v1 import generations_pb2, predictions_pb2, predictions_pb2_grpc

log = logging.getLogger("gateway.predictions")

# "Dia on any online provider": the model the predictor's clients know Dia by.
DIA = "nari-labs/dia"
PREFER_METADATA = "prefer"
# A runner renews its lease this often, and sees cancellations then.
LEASE_RENEW_SECONDS = 1.0
# A prediction whose runner has been silent this long is taken over.
LEASE_SECONDS = 10.0
# Times a prediction is generated again after its gateway stopped, before it fails.
MAX_RESUMES = 2
STATUSES = {"queued": "starting", "running": "processing", "succeeded": "succeeded", "failed": "failed", "canceled": "canceled"}
# Errors name the input's fields as the client sent them.
PUBLIC_NAMES = {name: f"input.{name}" for name in predictions_pb2.PredictionInput.DESCRIPTOR.fields_by_name}
# A version created_at that does not change between restarts.
VERSION_CREATED = datetime.datetime(2025, 4, 21, tzinfo=datetime.timezone.utc)
# urls.stream reads the stored prediction this often (so any gateway serves it).
STREAM_POLL_SECONDS = 0.5
# A stream with nothing new this long sends a comment, so that clients' read timeouts (the predictor's: 30 s) wait on.
STREAM_KEEPALIVE_SECONDS = 15.0
# A stream follows a prediction until GATEWAY_SYNTH_TIMEOUT_SECONDS after its creation plus this.
STREAM_MARGIN_SECONDS = LEASE_SECONDS
SSE = "text/event-stream"
_WAIT = re.compile(r"\s*wait\s*(?:=\s*([0-9]{1,6}))?\s*")


def version_id(model: str) -> str:
    """A model's (only) version id: 64 hex digits, as the predictor's are, stable across replicas."""
    return hashlib.sha256(f"voicemesh:{model}".encode()).hexdigest()


def wait_seconds(prefer: str, most: float) -> float:
    """How long ``Prefer`` asks to wait: "wait" the most allowed, "wait=N" N seconds (at most that); 0: answer at once."""
    for preference in prefer.split(","):
        match = _WAIT.fullmatch(preference)
        if match:
            return min(float(match.group(1)), most) if match.group(1) else most
    return 0.0


def input_schema() -> dict:
    """The model's OpenAPI schema: the seed's Input (names, types, defaults, ranges, descriptions) and Output."""
    properties: dict[str, dict] = {}
    for order, field in enumerate(predictions_pb2.PredictionInput.DESCRIPTOR.fields):
        declared = fields.rules(field)
        kind = "string" if field.type == field.TYPE_STRING else "number" if field.cpp_type == field.CPPTYPE_DOUBLE else "integer"
        described: dict = {"type": kind, "title": field.name.replace("_", " ").title(), "x-order": order}
        if field.name == "audio_prompt":
            described["format"] = "uri"
        if declared is not None:
            if declared.HasField("minimum") and not (field.name == "seed"):
                described["minimum"] = _number(declared.minimum)
            if declared.HasField("maximum"):
                described["maximum"] = _number(declared.maximum)
            if declared.default:
                described["default"] = json.loads(declared.default)
        described["description"] = SCHEMA_DESCRIPTIONS[field.name]
        properties[field.name] = described
    return {
        "openapi": "3.0.2",
        "info": {"title": "Dia", "version": "1.0.0"},
        "paths": {},
        "components": {
            "schemas": {
                "Input": {"type": "object", "title": "Input", "required": ["text"], "properties": properties},
                "Output": {"type": "string", "title": "Output", "format": "uri"},
            }
        },
    }


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


# The seed's descriptions, word for word.
SCHEMA_DESCRIPTIONS = {
    "text": "Input text for dialogue generation. Use [S1], [S2] to indicate different speakers and (description) "
    "in parentheses for non-verbal cues e.g., (laughs), (whispers).",
    "audio_prompt": "Optional audio file (.wav/.mp3/.flac) for voice cloning. The model will attempt to mimic this "
    "voice style.",
    "max_new_tokens": "Controls the length of generated audio. Higher values create longer audio (86 tokens ≈ 1 "
    "second of audio).",
    "max_audio_prompt_seconds": "Maximum duration in seconds for the input voice cloning audio prompt. Only used "
    "when an audio prompt is provided. Longer voice samples are truncated to this length.",
    "cfg_scale": "How closely the audio follows the text. Higher values (3-5) follow text more strictly; lower "
    "values may sound more natural but deviate more.",
    "temperature": "Randomness. Higher values (1.3-2.0) increase variety; lower values make output more "
    "consistent. 0 = deterministic (greedy) generation.",
    "top_p": "Nucleus sampling threshold.",
    "cfg_filter_top_k": "Filtering of audio generation tokens. Higher values allow more diverse sounds; lower "
    "values create more consistent audio.",
    "speed_factor": "Playback speed of the generated audio. Below 1.0 slows the audio down; 1.0 is original speed.",
    "seed": "Random seed: the same seed with identical inputs gives the same output. Blank = random each time.",
}


def checked_plan(given: predictions_pb2.PredictionInput, model: str) -> parameters.Plan:
    """The input checked against the seed's rules, as the pipeline's plan (its voice not yet found)."""
    overrides = {"input_chars": MAX_INPUT_CHARS.value}
    try:
        fields.check_field(given, "text", overrides)
        script = scripts.parse_script(given.text, MAX_INPUT_CHARS.value)
        fields.check(given, overrides)
    except ApiError as error:
        if error.param in PUBLIC_NAMES:
            error.param = PUBLIC_NAMES[error.param]
        raise
    chosen = {name: fields.value(given, name) for name in predictions_pb2.PredictionInput.DESCRIPTOR.fields_by_name}
    chosen["seed"] = given.seed if given.HasField("seed") else parameters.RANDOM_SEED
    settings_ = generations_pb2.GenerationParameters(
        **{name: chosen[name] for name in generations_pb2.GenerationParameters.DESCRIPTOR.fields_by_name}
    )
    # The seed allows max_new_tokens up to 4096; Dia's decoder holds fewer frames beside a
    # prompt, so the provider lowers it to what fits rather than refusing a valid input.
    return parameters.Plan(
        script, model, {}, settings_, chosen_max_new_tokens=False, visibility=parameters.DEFAULT_VISIBILITY, collection=""
    )


class Predictions(predictions_pb2_grpc.PredictionServiceServicer):
    def __init__(self, generations: GenerationService) -> None:
        self.generations = generations
        self.runner = f"{uuid.uuid4().hex[:12]}"  # this gateway process
        self._running: dict[str, asyncio.Task] = {}
        self._handing_over = False
        self._lease_task: asyncio.Task | None = None

    @property
    def accounts(self) -> Accounts:
        return self.generations.accounts

    def pool(self) -> asyncpg.Pool:
        return self.generations.pool()

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self._lease_task = asyncio.create_task(self._keep_leases())

    async def close(self) -> None:
        """Hand the predictions under way over to another gateway (or to this one, restarted)."""
        if self._lease_task is not None:
            self._lease_task.cancel()
        self._handing_over = True
        ids = list(self._running)
        for task in list(self._running.values()):
            task.cancel()
        if ids:
            try:
                async with connection(self.pool()) as db:
                    await db.execute(
                        "UPDATE generations SET runner_seen = '-infinity' WHERE id = ANY($1) AND runner = $2",
                        ids,
                        self.runner,
                    )
                log.info("handed predictions over", extra={"count": len(ids)})
            except ApiError:
                pass  # their leases run out instead

    async def _keep_leases(self) -> None:
        while True:
            try:
                await self._renew_and_take_over()
            except ApiError:  # database down: the next round
                pass
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("prediction lease round failed")
            await asyncio.sleep(LEASE_RENEW_SECONDS)

    async def _renew_and_take_over(self) -> None:
        async with connection(self.pool()) as db:
            if self._running:
                rows = await db.fetch(
                    """UPDATE generations SET runner_seen = now() WHERE id = ANY($1) AND runner = $2
                       RETURNING id, status""",
                    list(self._running),
                    self.runner,
                )
                for row in rows:
                    if row["status"] == "canceled" and row["id"] in self._running:
                        self._running[row["id"]].cancel()  # canceled, maybe through another replica
            orphans = await db.fetch(
                f"""UPDATE generations SET runner = $1, runner_seen = now(),
                        prediction = jsonb_set(prediction, '{{resumes}}',
                                               to_jsonb(coalesce((prediction->>'resumes')::int, 0) + 1))
                    WHERE id IN (SELECT id FROM generations
                                 WHERE prediction IS NOT NULL AND status IN ('queued', 'running')
                                   AND runner_seen < now() - make_interval(secs => $2)
                                 FOR UPDATE SKIP LOCKED LIMIT 10)
                    RETURNING {PREDICTION_COLUMNS}""",
                self.runner,
                LEASE_SECONDS,
            )
        for row in orphans:
            await self._resume(row)

    async def _resume(self, row: asyncpg.Record) -> None:
        stored = json.loads(row["prediction"])
        if stored.get("resumes", 0) > MAX_RESUMES:
            await history.mark_failed(
                self.pool(), row["id"], "interrupted",
                f"the gateway running this prediction stopped {MAX_RESUMES + 1} times; create it again",
            )
            return
        log.warning("resuming a prediction whose gateway stopped", extra={"generation": row["id"]})
        given = json_format.ParseDict(stored["input"], predictions_pb2.PredictionInput())
        plan = checked_plan(given, stored.get("generation_model", ""))
        speakers = json.loads(row["speakers"])
        plan = dataclasses.replace(plan, speakers=speakers)
        try:
            samples = await prompt_audio.samples_of(self.generations, row["account_id"], speakers)
        except (ApiError, grpc.aio.AioRpcError) as error:
            refusal = error if isinstance(error, ApiError) else ApiError.from_rpc_error(error)
            await history.mark_failed(self.pool(), row["id"], refusal.reason.lower(), refusal.message)
            return
        self._spawn(Admitted(row["id"], row["account_id"], plan, samples), stored)

    # --- creating ---------------------------------------------------------------

    async def CreatePrediction(self, request, context):
        account_id = await self.accounts.caller(context)
        if not request.version:
            raise invalid_parameter("version", "version is required: a version id, or \"owner/name\" of a model")
        model = await self._model_of_version(request.version)
        prediction = await self._create(account_id, model, request, context)
        return predictions_pb2.CreatePredictionResponse(prediction=prediction)

    async def CreateModelPrediction(self, request, context):
        account_id = await self.accounts.caller(context)
        model = await self._model(f"{request.owner}/{request.name}")
        prediction = await self._create(account_id, model, request, context)
        return predictions_pb2.CreateModelPredictionResponse(prediction=prediction)

    async def _create(self, account_id: int, model: str, request, context) -> predictions_pb2.Prediction:
        if not request.HasField("input"):
            raise invalid_parameter("input", "input is required: the model's input, at least {\"text\": ...}")
        events = webhooks.events_filter(list(request.webhook_events_filter))
        if request.webhook:
            webhooks.check_target(request.webhook)
        wait = wait_seconds(dict(context.invocation_metadata() or ()).get(PREFER_METADATA, ""),
                            PREDICTION_MAX_WAIT_SECONDS.value)
        generation_model = "" if model == DIA else model
        plan = checked_plan(request.input, generation_model)
        try:
            speakers = await prompt_audio.speakers_of(self.generations, account_id, request.input)
        except ApiError as error:
            if error.param == "audio_prompt":
                error.param = "input.audio_prompt"
            raise
        plan = dataclasses.replace(plan, speakers=speakers)
        generation = generations_pb2.CreateGenerationRequest(input=request.input.text, model=generation_model)
        admitted = await self.generations.admit(account_id, generation, checked=plan, public_names=PUBLIC_NAMES)
        stored = {
            "model": model,
            "version": version_id(model),
            "generation_model": generation_model,
            "input": json_format.MessageToDict(request.input, preserving_proto_field_name=True),
            "webhook": request.webhook,
            "webhook_events_filter": events,
        }
        async with connection(self.pool()) as db:
            await db.execute(
                "UPDATE generations SET prediction = $2, runner = $3, runner_seen = now() WHERE id = $1",
                admitted.generation_id,
                json.dumps(stored),
                self.runner,
            )
        task = self._spawn(admitted, stored)
        if wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(task), wait)
            except BaseException:  # noqa: BLE001 - over (however it ended) or still going: answered as stored
                if asyncio.current_task().cancelling():  # the caller hung up; the prediction goes on
                    raise
        return await self._get(account_id, admitted.generation_id)

    def _spawn(self, admitted: Admitted, stored: dict) -> asyncio.Task:
        task = asyncio.create_task(self._generate(admitted, stored))
        self._running[admitted.generation_id] = task
        task.add_done_callback(lambda _: self._running.pop(admitted.generation_id, None))
        return task

    async def _generate(self, admitted: Admitted, stored: dict) -> None:
        generation_id = admitted.generation_id
        hook = webhooks.Sender(stored.get("webhook", ""), stored.get("webhook_events_filter", []),
                               admitted.account_id, self.pool)
        if hook.active:
            await hook.send("start", await self._get(admitted.account_id, generation_id))
        try:
            await self.generations.run(
                admitted, SYNTH_TIMEOUT_SECONDS.value, public_names=PUBLIC_NAMES,
                record_cancellation=False,
            )
        except asyncio.CancelledError:
            if self._handing_over:
                raise  # stays under way: another gateway resumes it
            # Canceled by the caller: the row says so already.
        except Exception:  # noqa: BLE001 - recorded in the row by run()
            pass
        if hook.active:
            try:
                prediction = await self._get(admitted.account_id, generation_id)
            except ApiError:
                return
            await hook.send("completed", prediction)

    # --- reading ----------------------------------------------------------------

    async def GetPrediction(self, request, context):
        account_id = await self.accounts.caller(context)
        return predictions_pb2.GetPredictionResponse(prediction=await self._get(account_id, request.id))

    async def _get(self, account_id: int, prediction_id: str) -> predictions_pb2.Prediction:
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                f"SELECT {PREDICTION_COLUMNS} FROM generations WHERE id = $1 AND account_id = $2 AND prediction IS NOT NULL",
                prediction_id,
                account_id,
            )
        if row is None:
            raise not_found(f"there is no prediction {prediction_id}")
        return to_prediction(row, PUBLIC_URL.value)

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
        before = _decode_cursor(request.cursor)
        page_size = PREDICTIONS_PAGE_SIZE.value
        async with connection(self.pool()) as db:
            rows = await db.fetch(
                f"""SELECT {PREDICTION_COLUMNS} FROM generations
                    WHERE account_id = $1 AND prediction IS NOT NULL AND ($2::bigint IS NULL OR seq < $2)
                    ORDER BY seq DESC LIMIT $3""",
                account_id,
                before,
                page_size + 1,
            )
        answer = predictions_pb2.ListPredictionsResponse(
            results=[to_prediction(row, PUBLIC_URL.value) for row in rows[:page_size]]
        )
        if len(rows) > page_size:
            answer.next = f"{PUBLIC_URL.value.rstrip('/')}/v1/predictions?cursor={_encode_cursor(rows[page_size - 1]['seq'])}"
        return answer

    async def CancelPrediction(self, request, context):
        account_id = await self.accounts.caller(context)
        await self._get(account_id, request.id)  # 404 for another account's
        await history.mark_failed(self.pool(), request.id, "canceled", "canceled by the caller", status="canceled")
        task = self._running.get(request.id)
        if task is not None:
            task.cancel()  # ours: at once; another replica's sees it at its next lease renewal
        return predictions_pb2.CancelPredictionResponse(prediction=await self._get(account_id, request.id))

    # --- models -----------------------------------------------------------------

    async def _model(self, reference: str) -> str:
        """The model a reference names: DIA, or an online model id of the owner/name form; NOT_FOUND."""
        if reference == DIA:
            return DIA
        if OWNER_NAME.fullmatch(reference):
            models = await online_models(self.pool())
            if any(model.id == reference for model in models):
                return reference
        raise not_found(
            f"there is no model {reference[:100]!r}: use {DIA!r} (Dia on any online provider) or the id of an "
            "owner/name model listed by GET /v1/models"
        )

    async def _model_of_version(self, version: str) -> str:
        reference, _, wanted = version.partition(":")
        if OWNER_NAME.fullmatch(reference):
            model = await self._model(reference)
            if wanted and wanted != version_id(model):
                raise not_found(f"model {model} has no version {wanted[:100]!r}")
            return model
        for model in [DIA, *(m.id for m in await online_models(self.pool()) if OWNER_NAME.fullmatch(m.id))]:
            if version_id(model) == version:
                return model
        raise invalid_parameter(
            "version", f"there is no version {version[:100]!r}: use a version id of GET /v1/models/{DIA} or \"{DIA}\""
        )

    async def GetPredictionModel(self, request, context):
        await self.accounts.caller(context)
        model = await self._model(f"{request.owner}/{request.name}")
        return predictions_pb2.GetPredictionModelResponse(model=model_card(model))

    async def GetPredictionModelVersion(self, request, context):
        await self.accounts.caller(context)
        model = await self._model(f"{request.owner}/{request.name}")
        if request.version_id != version_id(model):
            raise not_found(f"model {model} has no version {request.version_id[:100]!r}")
        return predictions_pb2.GetPredictionModelVersionResponse(version=model_version(model))


def model_version(model: str) -> predictions_pb2.PredictionModelVersion:
    version = predictions_pb2.PredictionModelVersion(id=version_id(model), cog_version="voicemesh")
    version.created_at.FromDatetime(VERSION_CREATED)
    version.openapi_schema.update(input_schema())
    return version


def model_card(model: str) -> predictions_pb2.PredictionModel:
    owner, name = model.split("/", 1)
    description = (
        "Dia text-to-dialogue with voice cloning, on any online provider" if model == DIA else f"Dia model {model}"
    )
    return predictions_pb2.PredictionModel(
        url=f"{PUBLIC_URL.value.rstrip('/')}/v1/models/{model}",
        owner=owner,
        name=name,
        description=description,
        visibility="public",
        latest_version=model_version(model),
    )


# --- the rows -------------------------------------------------------------------

PREDICTION_COLUMNS = """seq, id, account_id, status, speakers, error_type, error_message, audio_duration_seconds,
    prediction, create_time, start_time, end_time, provider, model"""


def to_prediction(row: asyncpg.Record, public_url: str) -> predictions_pb2.Prediction:
    stored = json.loads(row["prediction"])
    base = public_url.rstrip("/")
    prediction = predictions_pb2.Prediction(
        id=row["id"],
        model=stored["model"],
        version=stored["version"],
        status=STATUSES[row["status"]],
        input=json_format.ParseDict(stored["input"], predictions_pb2.PredictionInput()),
        logs=logs(row),
        source="api",
        urls=predictions_pb2.PredictionUrls(
            get=f"{base}/v1/predictions/{row['id']}",
            cancel=f"{base}/v1/predictions/{row['id']}/cancel",
            stream=f"{base}/v1/predictions/{row['id']}/stream",
        ),
    )
    if row["status"] == "succeeded":
        prediction.output = f"{base}/v1/voice/generations/{row['id']}/audio"
    if row["status"] == "failed":
        prediction.error = f"{row['error_type']}: {row['error_message']}"
    if row["start_time"] is not None and row["end_time"] is not None:
        prediction.metrics.predict_time = (row["end_time"] - row["start_time"]).total_seconds()
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


def logs(row: asyncpg.Record) -> str:
    """Progress lines, from what the row records."""
    lines = ["queued: checking the input and preparing the voice prompt"]
    resumes = json.loads(row["prediction"]).get("resumes", 0)
    if resumes:
        lines.append(f"its gateway stopped: generating it again from its input (take {resumes + 1})")
    if row["start_time"] is not None:
        lines.append(f"generating on provider {row['provider'] or '?'} with model {row['model'] or '?'}")
    if row["status"] == "succeeded":
        lines.append(f"generated {row['audio_duration_seconds']:.2f} s of audio")
    elif row["status"] in ("failed", "canceled"):
        lines.append(f"{row['status']}: {row['error_message']}")
    return "\n".join(lines) + "\n"


def _encode_cursor(seq: int) -> str:
    return f"p{seq}"


def _decode_cursor(cursor: str) -> int | None:
    if not cursor:
        return None
    if not re.fullmatch(r"p[0-9]{1,18}", cursor):
        raise invalid_parameter("cursor", "cursor is not valid: follow the \"next\" URL of the previous page")
    return int(cursor[1:])
