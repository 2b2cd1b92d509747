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
admitted request is stored as queued, then running, then succeeded,
failed (no provider, the provider failing) or canceled (the caller hanging
up, which stops the generation), whatever happens. Its id is sent in the ``x-generation-id`` response metadata,
which the HTTP front passes on as the X-Generation-Id header. With the
database down nothing is stored, so nothing is generated: 503
DATABASE_UNAVAILABLE.

:meth:`GenerationService.generate` is that whole pipeline (check, admit and
store, voice prompt, provider, store) and :meth:`GenerationService.stream`
the same streamed; every endpoint that generates runs one of them, the speech
endpoint (speech.py) with a request translated into these terms. Both are
:meth:`~GenerationService.admit` then :meth:`~GenerationService.run` (or
``run_streamed``), the two halves predictions (predictions.py) call apart.
A script longer than Dia's window is generated in chunks (long_scripts.py)
by either half the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Mapping

import asyncpg
import grpc
import numpy as np
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
    SCRIPT_CHUNK_BYTES,
    SYNTH_TIMEOUT_SECONDS,
)
from services.gateway.generation import history, long_scripts, parameters, prompt
from services.gateway.generation.routing import Candidate, Router
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc
from voice.synth.v1 import synth_pb2

log = logging.getLogger("gateway.generations")

GENERATION_ID_METADATA = "x-generation-id"
WAV = "audio/wav"
# A long script's chunks leave at least this much of Dia's window to the script.
MIN_CHUNK_BYTES = 128
# A WAV header's sizes while the length is not known (a stream).
UNKNOWN_LENGTH = 0xFFFFFFFF

REFUSED = prometheus_client.Counter(
    "gateway_generations_refused_total",
    "Generation requests refused before they were admitted (and so not in the history), by error type.",
    ["type"],
)
GENERATION_SECONDS = prometheus_client.Histogram(
    "gateway_generation_seconds",
    "Time from a generation's admission to its end (all its audio ready or sent, failed, or its caller gone), "
    "by outcome (succeeded, failed, canceled).",
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
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "canceled", "the caller went away before the generation finished; it was stopped"
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

    async def StreamGeneration(self, request, context):
        account_id = await self.accounts.caller(context)
        unary = generations_pb2.CreateGenerationRequest.FromString(request.SerializeToString())  # the same fields
        async with contextlib.aclosing(self.stream(account_id, unary, context)) as messages:
            async for body in streamed_wav(messages):
                yield generations_pb2.StreamGenerationResponse(audio=body)

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
        return await self.run(admitted, _synth_timeout(context), finish=finish, public_names=public_names)

    async def stream(
        self,
        account_id: int,
        request: generations_pb2.CreateGenerationRequest,
        context: grpc.aio.ServicerContext,
        *,
        prepare: Prepare | None = None,
        public_names: Mapping[str, str] | None = None,
    ) -> AsyncIterator[synth_pb2.StreamSynthesizeResponse]:
        """The same pipeline, streamed (see run_streamed)."""
        admitted = await self.admit(account_id, request, prepare=prepare, public_names=public_names)
        await context.send_initial_metadata(((GENERATION_ID_METADATA, admitted.generation_id),))
        messages = self.run_streamed(admitted, _synth_timeout(context), public_names=public_names)
        async with contextlib.aclosing(messages):  # closed now, not when collected: it stops the provider
            async for message in messages:
                yield message

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
        """The pipeline's second half: generate an admitted request, its provider calls within
        `timeout` seconds (all its chunks together, for a long script), and store how it ended: canceled when the caller
        hangs up or the run is cancelled, unless `record_cancellation` is off (the canceller
        records it then)."""
        began = time.perf_counter()
        try:
            generated = await self._generate(admitted, timeout, finish)
        except BaseException as error:
            await self._ended_badly(admitted, error, began, public_names, record_cancellation)
            raise
        GENERATION_SECONDS.labels("succeeded").observe(time.perf_counter() - began)
        return generated

    async def run_streamed(
        self,
        admitted: Admitted,
        timeout: float,
        *,
        public_names: Mapping[str, str] | None = None,
        record_cancellation: bool = True,
    ) -> AsyncIterator[synth_pb2.StreamSynthesizeResponse]:
        """`run`, streamed: the provider's messages (16-bit mono PCM at their sample_rate) as they
        come. Once the last has come the whole is stored as one WAV and the generation has
        succeeded; a caller who goes away (closes this generator) stops it, and it is canceled."""
        began = time.perf_counter()
        try:
            pcm = bytearray()
            last = None
            assembled = await self._prompt(admitted) if admitted.samples else None
            synthesis_began = time.perf_counter()
            chunks = self._chunked(admitted, assembled, timeout)
            async with contextlib.aclosing(chunks):
                async for candidate, number, message in chunks:
                    pcm += message.pcm
                    if message.last:
                        last = message
                    yield message
            assert last is not None
            _count_audio(last.duration_seconds, synthesis_began)
            row = await history.mark_succeeded(
                self.pool(), admitted.generation_id, wav_of(bytes(pcm), last.sample_rate), last.duration_seconds,
                last.model or candidate.model, last.seed, number + 1,
            )  # fmt: skip
            if row is None:  # canceled meanwhile (a prediction)
                raise asyncio.CancelledError()
            log.info(
                "generated",
                extra={"generation": admitted.generation_id, "provider": candidate.provider_id, "streamed": True},
            )
        except BaseException as error:
            await self._ended_badly(admitted, error, began, public_names, record_cancellation)
            raise
        GENERATION_SECONDS.labels("succeeded").observe(time.perf_counter() - began)

    async def _ended_badly(
        self,
        admitted: Admitted,
        error: BaseException,
        began: float,
        public_names: Mapping[str, str] | None,
        record_cancellation: bool,
    ) -> None:
        """Count and store a run that did not succeed (the error is raised on by the caller)."""
        canceled = isinstance(error, (asyncio.CancelledError, GeneratorExit))
        GENERATION_SECONDS.labels("canceled" if canceled else "failed").observe(time.perf_counter() - began)
        if canceled and not record_cancellation:
            return
        if isinstance(error, ApiError):
            in_callers_terms(error, public_names or {})
        # Shielded: a caller who hung up still leaves a finished record behind.
        await asyncio.shield(self._record_failure(admitted.generation_id, error))

    async def _generate(self, admitted: Admitted, timeout: float, finish: Finish) -> Generated:
        generation_id, account_id, plan = admitted.generation_id, admitted.account_id, admitted.plan
        assembled = await self._prompt(admitted) if admitted.samples else None
        if len(self._split(plan.script.text, assembled)) > 1:
            return await self._generate_chunks(admitted, assembled, timeout, finish)
        synthesis = synth_pb2.SynthesizeRequest(
            script=plan.script.text,
            settings=parameters.synth_settings(plan.parameters, plan.chosen_max_new_tokens),
            account=str(account_id),  # the provider's queue takes accounts in turns
        )
        if assembled is not None:
            synthesis.audio_prompt.CopyFrom(assembled)

        synthesis_began = time.perf_counter()
        candidate, reply = await self.router.synthesize(
            synthesis, plan.model, timeout, self._running(generation_id)
        )
        _count_audio(reply.duration_seconds, synthesis_began)
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

    async def _generate_chunks(
        self, admitted: Admitted, assembled: synth_pb2.AudioPrompt | None, timeout: float, finish: Finish
    ) -> Generated:
        """A long script, its chunks joined with a short crossfade (long_scripts.py)."""
        parts: list[bytearray] = []
        began = time.perf_counter()
        chunks = self._chunked(admitted, assembled, timeout)
        async with contextlib.aclosing(chunks):
            async for candidate, number, message in chunks:
                if number == len(parts):
                    parts.append(bytearray())
                parts[number] += message.pcm
                last = message
        rate = last.sample_rate or 44100
        joined = long_scripts.crossfaded([np.frombuffer(bytes(part), dtype="<i2") for part in parts], rate)
        wav, duration = wav_of(joined.astype("<i2").tobytes(), rate), joined.size / rate
        _count_audio(duration, began)
        audio = await finish(wav)
        row = await history.mark_succeeded(
            self.pool(), admitted.generation_id, wav, duration, last.model or candidate.model, last.seed, len(parts)
        )
        if row is None:  # canceled meanwhile (a prediction)
            raise asyncio.CancelledError()
        log.info(
            "generated", extra={"generation": admitted.generation_id, "chunks": len(parts), "seconds": round(duration, 2)}
        )
        return Generated(history.to_proto(row, PUBLIC_URL.value), audio)

    async def _chunked(
        self, admitted: Admitted, assembled: synth_pb2.AudioPrompt | None, timeout: float
    ) -> AsyncIterator[tuple[Candidate, int, synth_pb2.StreamSynthesizeResponse]]:
        """The script's chunks generated in order (one for a script that fits Dia's window;
        long_scripts.py), streamed: (provider, chunk number, message). Only the final chunk's
        last message is `last`, and it counts the whole (duration, frames). `assembled`: the
        cloned voices' prompt, or None. All chunks share the `timeout` seconds."""
        plan = admitted.plan
        deadline = time.monotonic() + timeout
        chunks = self._split(plan.script.text, assembled)
        previous: tuple[long_scripts.Chunk, bytes, int] | None = None  # chunk, its PCM, sample rate
        seconds = frames = 0.0
        for number, chunk in enumerate(chunks):
            tail = None
            if assembled is None and previous is not None:
                tail = self._tail_prompt(*previous, plan.parameters.max_audio_prompt_seconds)
            # The tail prompt is the gateway's, not the caller's: their max_new_tokens, which fits
            # without it, is lowered to make room for it rather than refused.
            chosen = plan.chosen_max_new_tokens and tail is None
            synthesis = synth_pb2.StreamSynthesizeRequest(
                script=chunk.text,
                settings=parameters.synth_settings(plan.parameters, chosen),
                account=str(admitted.account_id),  # the provider's queue takes accounts in turns
            )
            if assembled is not None:
                synthesis.audio_prompt.CopyFrom(assembled)  # cloned voices: their samples again
            elif tail is not None:
                synthesis.audio_prompt.CopyFrom(tail)
            pcm = bytearray()
            messages = self.router.stream_synthesize(
                synthesis, plan.model, _left(deadline), self._running(admitted.generation_id)
            )
            async with contextlib.aclosing(messages):
                async for candidate, message in messages:
                    pcm += message.pcm
                    if message.last:
                        seconds += message.duration_seconds
                        frames += message.generated_frames
                        if number < len(chunks) - 1:
                            message = synth_pb2.StreamSynthesizeResponse(pcm=message.pcm, sample_rate=message.sample_rate)
                        else:
                            message.duration_seconds, message.generated_frames = seconds, int(frames)
                    yield candidate, number, message
            previous = (chunk, bytes(pcm), message.sample_rate or 44100)

    def _split(self, script: str, assembled: synth_pb2.AudioPrompt | None) -> list[long_scripts.Chunk]:
        """The chunks of `script` that fit Dia's window with their prompts (one when it all fits)."""
        window = SCRIPT_CHUNK_BYTES.value
        transcript = long_scripts.size(assembled.transcript) + 1 if assembled is not None else 0
        if transcript + long_scripts.size(script) <= window:
            return [long_scripts.Chunk((long_scripts.Piece("", script),), whole=script)]
        reserved = transcript if assembled is not None else long_scripts.TAIL_TEXT_BYTES + 1
        budget = window - reserved
        if budget < MIN_CHUNK_BYTES:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "REQUEST_TOO_LARGE",
                f"the voice samples' transcripts take {reserved} of the {window} bytes Dia reads at once, which leaves "
                f"too little for the script; shorten them (PATCH /v1/voice/samples/{{id}})",
                param="speakers",
            )
        return long_scripts.split(script, budget)

    @staticmethod
    def _tail_prompt(chunk: long_scripts.Chunk, pcm: bytes, rate: int, max_seconds: float) -> synth_pb2.AudioPrompt | None:
        """The end of the previous chunk, to continue its voices from (uncloned speakers)."""
        text, share = long_scripts.tail(chunk)
        samples = len(pcm) // 2
        count = min(int(samples * share), int(max_seconds * rate))
        if not text or count <= 0:
            return None
        return synth_pb2.AudioPrompt(wav=wav_of(pcm[(samples - count) * 2 :], rate), transcript=text)

    def _running(self, generation_id: str):
        async def running_on(candidate: Candidate) -> None:
            await history.mark_running(self.pool(), generation_id, candidate.provider_id, candidate.model)

        return running_on

    async def _prompt(self, admitted: Admitted) -> synth_pb2.AudioPrompt:
        """The voice-cloning prompt of the samples, from the cache when they are unchanged."""
        account_id, samples = admitted.account_id, admitted.samples
        max_seconds, gap = admitted.plan.parameters.max_audio_prompt_seconds, PROMPT_GAP_SECONDS.value
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
            status = "canceled" if kind == "canceled" else "failed"
            await history.mark_failed(self.pool(), generation_id, kind, message, status)
        except ApiError:  # the database went away meanwhile: the caller gets the original error
            log.warning("could not record the failure of a generation", extra={"generation": generation_id})

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



def _synth_timeout(context: grpc.aio.ServicerContext) -> float:
    """The seconds a generation may take: GATEWAY_SYNTH_TIMEOUT_SECONDS, or less if the caller waits less."""
    timeout = SYNTH_TIMEOUT_SECONDS.value
    if context.time_remaining() is not None:
        timeout = min(timeout, context.time_remaining())
    return timeout


def _left(deadline: float) -> float:
    """The seconds a provider call may take: what is left of the generation's (a long script's chunks share it)."""
    return max(deadline - time.monotonic(), 0.001)


def _count_audio(duration_seconds: float, began: float) -> None:
    """Audio seconds made, and the providers' seconds per audio second since `began`."""
    if duration_seconds > 0:
        AUDIO_SECONDS.inc(duration_seconds)
        REAL_TIME_FACTOR.observe((time.perf_counter() - began) / duration_seconds)


async def streamed_wav(messages: AsyncIterator[synth_pb2.StreamSynthesizeResponse]) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """A streamed generation as audio/wav: a header of unknown length first, then the samples as they come."""
    first = True
    async for message in messages:
        data = message.pcm
        if first:
            data, first = wav_header(message.sample_rate) + data, False
        if data:
            yield httpbody_pb2.HttpBody(content_type=WAV, data=data)


def wav_header(sample_rate: int, data_bytes: int = UNKNOWN_LENGTH) -> bytes:
    """The 44-byte header of 16-bit mono WAV; streams, whose length is not known yet, say 0xFFFFFFFF."""
    riff = UNKNOWN_LENGTH if data_bytes == UNKNOWN_LENGTH else 36 + data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16, b"data", data_bytes
    )


def wav_of(pcm: bytes, sample_rate: int) -> bytes:
    return wav_header(sample_rate, len(pcm)) + pcm


def account_limits() -> history.AccountLimits:
    return history.AccountLimits(
        ACCOUNT_GENERATIONS_PER_SECOND.value, ACCOUNT_GENERATION_BURST.value, ACCOUNT_CONCURRENT_GENERATIONS.value
    )
