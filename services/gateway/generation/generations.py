"""GenerationService: POST /v1/voice/generations and the history of generations.

Callers authenticate with ``authorization: Bearer <key>`` metadata, or come
through the HTTP edge, which checked their key (see accounts.py): an
internal gRPC client uses the same key as an HTTP one, and a bare
``x-account-id`` is never trusted here.

A request is first checked at the door: its fields, the voice samples it
names (one small library call per speaker) and its account's limits (rate
and generations under way, history.admit). A request refused there (400,
413, 429, or 503 when the database or library is down) is not stored: it is
counted in ``gateway_generations_refused_total`` by error type and logged. An
admitted request is stored as queued, then running, then succeeded or
failed, whatever happens (no provider, the provider failing, the caller
hanging up). Its id is sent in the ``x-generation-id`` response metadata,
which the HTTP front passes on as the X-Generation-Id header. With the
database down nothing is stored, so nothing is generated: 503
DATABASE_UNAVAILABLE.

:meth:`GenerationService.generate` is that whole pipeline (check, admit and
store, voice prompt, provider, store); every endpoint that generates runs it,
the speech endpoint (speech.py) with a request translated into these terms.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping

import asyncpg
import grpc
import prometheus_client
from google.api import httpbody_pb2

from runtime import clients, fields
from runtime.errors import ApiError
from services.gateway.accounts import Accounts
from services.gateway.config import (
    ACCOUNT_CONCURRENT_GENERATIONS,
    ACCOUNT_GENERATION_BURST,
    ACCOUNT_GENERATIONS_PER_SECOND,
    MAX_COLLECTION_CHARS,
    MAX_INPUT_CHARS,
    PROMPT_CACHE_BYTES,
    PROMPT_GAP_SECONDS,
    PUBLIC_URL,
    SYNTH_TIMEOUT_SECONDS,
)
from services.gateway.generation import history, parameters, prompt
from services.gateway.generation.routing import Candidate, Router
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc
from voice.synth.v1 import synth_pb2

log = logging.getLogger("gateway.generations")

GENERATION_ID_METADATA = "x-generation-id"
WAV = "audio/wav"

REFUSED = prometheus_client.Counter(
    "gateway_generations_refused_total",
    "Generation requests refused before they were admitted (and so not in the history), by error type.",
    ["type"],
)
GENERATION_SECONDS = prometheus_client.Histogram(
    "gateway_generation_seconds",
    "Time from a generation's admission to its end (audio ready or failed), by outcome (succeeded, failed).",
    ["outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
AUDIO_SECONDS = prometheus_client.Counter(
    "gateway_generated_audio_seconds", "Seconds of audio generated (successful generations)."
)
REAL_TIME_FACTOR = prometheus_client.Histogram(
    "gateway_generation_real_time_factor",
    "Seconds the synth providers took per second of audio they generated (queueing included); "
    "below 1 is faster than real time.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
)


def error_type(error: BaseException) -> tuple[str, str]:
    """The public error type and message a failed generation is recorded with."""
    if isinstance(error, grpc.aio.AioRpcError):  # an upstream's error, passed on as it is
        error = ApiError.from_rpc_error(error)
    if isinstance(error, ApiError):
        return error.reason.lower(), error.message
    if isinstance(error, asyncio.CancelledError):
        return "cancelled", "the caller went away before the generation finished"
    return "internal", "internal error"


@dataclass(frozen=True)
class Generated:
    generation: generations_pb2.Generation  # as stored: succeeded
    audio: httpbody_pb2.HttpBody  # what the caller gets


@dataclass(frozen=True)
class Admitted:
    """A request admitted and stored as queued, not yet generated."""

    generation_id: str
    account_id: int
    plan: parameters.Plan
    samples: list[prompt.Sample]


# Further checks of a request that passed its own, for what only other
# services can tell (the speech endpoint's voice); returns the plan to generate.
Prepare = Callable[[parameters.Plan], Awaitable[parameters.Plan]]
# The caller's audio made from the generated WAV, before the generation counts as succeeded.
Finish = Callable[[bytes], Awaitable[httpbody_pb2.HttpBody]]


async def as_wav(wav: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=WAV, data=wav)


def in_callers_terms(error: ApiError, names: Mapping[str, str]) -> None:
    """Rename the request field an error names (param and message) to the caller's name for it."""
    public = names.get(error.param or "")
    if public is not None:
        error.message = re.sub(rf"(?<![\w.]){re.escape(error.param)}(?![\w.])", lambda _: public, error.message)
        error.param = public


class GenerationService(generations_pb2_grpc.GenerationServiceServicer):
    def __init__(self, pool: Callable[[], asyncpg.Pool], accounts: Accounts, router: Router) -> None:
        self.pool = pool
        self.accounts = accounts
        self.router = router
        self.prompts = prompt.PromptCache(PROMPT_CACHE_BYTES.value)
        self.library: grpc.aio.Channel | None = None
        self.transcode: grpc.aio.Channel | None = None
        self.stt: grpc.aio.Channel | None = None  # times the words of samples cut to fit a prompt

    def start(self) -> None:
        self.library = clients.service_channel("library")
        self.transcode = clients.service_channel("transcode")
        self.stt = clients.service_channel("stt")

    async def close(self) -> None:
        for channel in (self.library, self.transcode, self.stt):
            if channel is not None:
                await channel.close()

    # --- generating ------------------------------------------------------------

    async def CreateGeneration(self, request, context):
        account_id = await self.accounts.caller(context)
        generated = await self.generate(account_id, request, context)
        return generations_pb2.CreateGenerationResponse(generation=generated.generation, audio=generated.audio)

    async def generate(
        self,
        account_id: int,
        request: generations_pb2.CreateGenerationRequest,
        context: grpc.aio.ServicerContext,
        *,
        prepare: Prepare | None = None,
        finish: Finish = as_wav,
        public_names: Mapping[str, str] | None = None,
    ) -> Generated:
        """Check the request, store it, generate it, store how it ended; see the module's docstring.

        `public_names` maps fields of `request` to the names its caller used,
        so that errors (sent and stored) speak the caller's terms.
        """
        admitted = await self.admit(account_id, request, prepare=prepare, public_names=public_names)
        await context.send_initial_metadata(((GENERATION_ID_METADATA, admitted.generation_id),))
        timeout = SYNTH_TIMEOUT_SECONDS.value
        if context.time_remaining() is not None:
            timeout = min(timeout, context.time_remaining())
        return await self.run(admitted, timeout, finish=finish, public_names=public_names)

    async def admit(
        self,
        account_id: int,
        request: generations_pb2.CreateGenerationRequest,
        *,
        prepare: Prepare | None = None,
        checked: parameters.Plan | None = None,
        public_names: Mapping[str, str] | None = None,
    ) -> Admitted:
        """The pipeline's first half: check the request (or take the `checked` plan of an adapter
        with rules of its own), fetch its samples, admit and store it as queued."""
        names = public_names or {}
        limits = parameters.Limits(MAX_INPUT_CHARS.value, MAX_COLLECTION_CHARS.value)
        try:
            plan = checked or parameters.plan(request, limits)
            if prepare is not None:
                plan = await prepare(plan)
            samples = await prompt.fetch_samples(self.library, account_id, plan.speakers) if plan.speakers else []
            generation_id = await history.admit(
                self.pool(),
                history.NewGeneration(
                    account_id, request.input, plan.model, plan.speakers, plan.parameters, plan.visibility, plan.collection
                ),
                account_limits(),
            )
        except (ApiError, grpc.aio.AioRpcError) as error:
            refusal = error if isinstance(error, ApiError) else ApiError.from_rpc_error(error)
            in_callers_terms(refusal, names)
            kind = refusal.reason.lower()
            REFUSED.labels(kind).inc()
            log.info("generation refused", extra={"account_id": account_id, "type": kind})
            raise refusal from None
        return Admitted(generation_id, account_id, plan, samples)

    async def run(
        self,
        admitted: Admitted,
        timeout: float,
        *,
        finish: Finish = as_wav,
        public_names: Mapping[str, str] | None = None,
        record_cancellation: bool = True,
    ) -> Generated:
        """The pipeline's second half: generate an admitted request and store how it ended
        (failed also when the caller hangs up or the run is cancelled, unless
        `record_cancellation` is off: the canceller records it then)."""
        began = time.perf_counter()
        try:
            generated = await self._generate(admitted, timeout, finish)
            GENERATION_SECONDS.labels("succeeded").observe(time.perf_counter() - began)
            return generated
        except BaseException as error:
            GENERATION_SECONDS.labels("failed").observe(time.perf_counter() - began)
            if isinstance(error, asyncio.CancelledError) and not record_cancellation:
                raise
            if isinstance(error, ApiError):
                in_callers_terms(error, public_names or {})
            # Shielded: a caller who hung up still leaves a finished record behind.
            await asyncio.shield(self._record_failure(admitted.generation_id, error))
            raise

    async def _generate(self, admitted: Admitted, timeout: float, finish: Finish) -> Generated:
        generation_id, account_id, plan, samples = (
            admitted.generation_id, admitted.account_id, admitted.plan, admitted.samples
        )
        synthesis = synth_pb2.SynthesizeRequest(
            script=plan.script.text,
            settings=parameters.synth_settings(plan.parameters, plan.chosen_max_new_tokens),
            account=str(account_id),  # the provider's queue takes accounts in turns
        )
        if samples:
            synthesis.audio_prompt.CopyFrom(await self._prompt(account_id, samples, plan))

        async def running_on(candidate: Candidate) -> None:
            await history.mark_running(self.pool(), generation_id, candidate.provider_id, candidate.model)

        synthesis_began = time.perf_counter()
        candidate, reply = await self.router.synthesize(synthesis, plan.model, timeout, running_on)
        if reply.duration_seconds > 0:
            AUDIO_SECONDS.inc(reply.duration_seconds)
            REAL_TIME_FACTOR.observe((time.perf_counter() - synthesis_began) / reply.duration_seconds)
        audio = await finish(reply.wav)
        row = await history.mark_succeeded(
            self.pool(), generation_id, reply.wav, reply.duration_seconds, reply.model or candidate.model, reply.seed
        )
        if row is None:  # canceled meanwhile (a prediction)
            raise asyncio.CancelledError()
        log.info(
            "generated",
            extra={"generation": generation_id, "provider": candidate.provider_id, "seconds": round(reply.duration_seconds, 2)},
        )
        return Generated(history.to_proto(row, PUBLIC_URL.value), audio)

    async def _prompt(
        self, account_id: int, samples: list[prompt.Sample], plan: parameters.Plan
    ) -> synth_pb2.AudioPrompt:
        """The voice-cloning prompt of the samples, from the cache when they are unchanged."""
        max_seconds, gap = plan.parameters.max_audio_prompt_seconds, PROMPT_GAP_SECONDS.value
        key = prompt.PromptCache.key(account_id, samples, max_seconds, gap)
        assembled = self.prompts.get(key)
        if assembled is None:
            clips = await prompt.fetch_clips(self.library, account_id, samples)
            made = await prompt.assemble(self.transcode, clips, max_seconds, gap, self.stt)
            assembled = made.prompt
            if made.exact:  # a sample kept whole for want of word timings is cut properly next time
                self.prompts.put(key, assembled)
        return assembled

    async def _record_failure(self, generation_id: str, error: BaseException) -> None:
        kind, message = error_type(error)
        try:
            await history.mark_failed(self.pool(), generation_id, kind, message)
        except ApiError:  # the database went away meanwhile: the caller gets the original error
            log.warning("could not record the failure of a generation", extra={"generation": generation_id})

    async def StreamGeneration(self, request, context):
        await self.accounts.caller(context)
        raise ApiError(
            grpc.StatusCode.UNIMPLEMENTED,
            "NOT_IMPLEMENTED",
            "streaming generation is not available yet; use CreateGeneration (POST /v1/voice/generations)",
        )
        yield  # a generator, as a server-streaming handler must be

    # --- history ---------------------------------------------------------------

    async def ListGenerations(self, request, context):
        account_id = await self.accounts.caller(context)
        fields.check(request)
        rows, next_token = await history.list_page(
            self.pool(), account_id, request.page_size, request.page_token, request.status, request.collection
        )
        return generations_pb2.ListGenerationsResponse(
            generations=[history.to_proto(row, PUBLIC_URL.value) for row in rows], next_page_token=next_token
        )

    async def GetGeneration(self, request, context):
        account_id = await self.accounts.caller(context)
        row = await history.get(self.pool(), account_id, request.id)
        return generations_pb2.GetGenerationResponse(generation=history.to_proto(row, PUBLIC_URL.value))

    async def UpdateGeneration(self, request, context):
        account_id = await self.accounts.caller(context)
        fields.check(request)
        row = await history.update_sharing(
            self.pool(),
            account_id,
            request.id,
            request.visibility if request.HasField("visibility") else None,
            request.collection if request.HasField("collection") else None,
        )
        return generations_pb2.UpdateGenerationResponse(generation=history.to_proto(row, PUBLIC_URL.value))

    async def GetGenerationAudio(self, request, context):
        account_id = await self.accounts.caller(context)
        audio = await history.get_audio(self.pool(), account_id, request.id)
        return generations_pb2.GetGenerationAudioResponse(audio=httpbody_pb2.HttpBody(content_type=WAV, data=audio))

    async def GetSharedGenerationAudio(self, request, context):
        # No key: the share token is the secret (see history.shared_audio).
        audio = await history.shared_audio(self.pool(), request.share_token)
        return generations_pb2.GetSharedGenerationAudioResponse(audio=httpbody_pb2.HttpBody(content_type=WAV, data=audio))



def account_limits() -> history.AccountLimits:
    return history.AccountLimits(
        ACCOUNT_GENERATIONS_PER_SECOND.value, ACCOUNT_GENERATION_BURST.value, ACCOUNT_CONCURRENT_GENERATIONS.value
    )
