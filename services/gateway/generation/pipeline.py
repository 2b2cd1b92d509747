"""The generation pipeline: one canonical generation, from admission to stored audio.

Every face that generates (this API's GenerationService, the OpenAI and
hosted-predictor dialects, background jobs) hands the pipeline a
``GenerationSpec`` and runs it in two halves:

* :meth:`Pipeline.admit` checks the spec (request.py), asks the library for
  its voice samples (one small call per speaker) and admits it at the
  database under its account's limits, storing it as ``queued``. A request
  refused here (400, 409, 413, 429, or 503 when the database or library is
  down) is not stored: it is counted in ``gateway_generations_refused_total``
  by error type and logged.
* :meth:`Pipeline.run` (or :meth:`Pipeline.run_streamed`) names the voices
  the provider makes the prompt of (prompt.py), fits the parameters to the
  providers' model (Dia's decoder positions hold the prompt's frames and the
  new ones: a prompt is cut to leave room for MIN_NEW_FRAMES, and
  max_new_tokens lowered to what is left beside its longest), generates on a provider (routing.py), and stores how it ended:
  ``succeeded`` with its audio (stored in the object store first, storage.py;
  a store that is down fails it with ``storage_unavailable``), ``failed`` with
  the public error, or ``canceled`` when its caller hung up (which stops the
  provider). An end
  that the database could not take (it was down: the caller gets 503
  ``database_unavailable``) is written as soon as it answers again
  (GenerationsTable.end), so the generation stops counting against its
  account then, not at the abandoned-generation sweep.

A script longer than the model's text window is generated in chunks
(long_scripts.py) by either half the same way. The pipeline knows no
transport: the servicers (this API's, the dialects') translate in and out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import struct
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Mapping

import grpc
import numpy as np
import prometheus_client
from google.api import httpbody_pb2

from runtime import tracing
from runtime.errors import ApiError, invalid_parameter
from services.gateway.generation import long_scripts, prompt, request
from services.gateway.generation.analysis import Analyzer, best
from services.gateway.generation.audio_urls import AudioUrls
from services.gateway.generation.library import Library, Sample
from services.gateway.generation.resources import generation_message
from services.gateway.generation.routing import Candidate, ModelLimits, Router, voices_key
from services.gateway.generation.storage import AudioStorage, generation_key
from services.gateway.store import generations as stored
from services.gateway.store.generations import AccountLimits, GenerationsTable
from voice.gateway.v1 import generations_pb2
from voice.synth.v1 import synth_pb2

log = logging.getLogger("gateway.generations")

WAV = "audio/wav"
# A long script's chunks leave at least this much of Dia's window to the script.
MIN_CHUNK_BYTES = 128
# A WAV header's sizes while the length is not known (a stream).
UNKNOWN_LENGTH = 0xFFFFFFFF
# A voice prompt is cut to leave the decoder room for at least this many new frames
# (the least max_new_tokens this API takes).
MIN_NEW_FRAMES = 256
# Dia's end marker and delay tail: frames that carry no audio of their own.
FRAMES_WITHOUT_AUDIO = 16
# A generation's error message in the history when the database went away under it.
DATABASE_LOST = (
    "the database became unavailable while this generation was under way, so it was stopped and nothing of it "
    "was kept; create it again"
)
# Why a streamed generation cannot have best_of above 1.
STREAMED_BEST_OF = "with streaming: the audio is sent as it is made, before candidates could be compared"
# A caller's own generation id: "gen_" and 8 to 64 letters, digits, "-" or "_".
CALLERS_ID = re.compile(r"gen_[A-Za-z0-9_-]{8,64}")

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


def in_callers_terms(error: ApiError, names: Mapping[str, str]) -> None:
    """Rename the request field an error names (param and message) to the caller's name for it."""
    public = names.get(error.param or "")
    if public is not None:
        error.message = re.sub(rf"(?<![\w.]){re.escape(error.param)}(?![\w.])", lambda _: public, error.message)
        error.param = public


@dataclass(frozen=True)
class Settings:
    """The pipeline's limits, read from the gateway's settings once."""

    request: request.Limits
    account: AccountLimits


@dataclass(frozen=True)
class Admitted:
    """A generation admitted and stored as queued, not yet generated."""

    generation_id: str
    account_id: int
    plan: request.Plan
    samples: list[Sample]


@dataclass(frozen=True)
class Generated:
    generation: generations_pb2.Generation  # as stored: succeeded
    audio: httpbody_pb2.HttpBody  # what the caller gets


# The caller's audio made from the generated WAV, before the generation counts as succeeded.
Finish = Callable[[bytes], Awaitable[httpbody_pb2.HttpBody]]
# Told the parameters a generation runs with, once they are known (before any provider is called).
Announce = Callable[[generations_pb2.GenerationParameters], Awaitable[None]]


async def as_wav(wav: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=WAV, data=wav)


async def _nothing(parameters: generations_pb2.GenerationParameters) -> None:
    pass


@dataclass(frozen=True)
class _Prepared:
    """What a run generates with: the voices the provider makes its prompt of (or None), with that prompt's
    longest transcript; the providers that can serve it, and the parameters fitted to their model."""

    voices: synth_pb2.VoicePrompt | None
    prompt_transcript: str
    found: list[Candidate]
    limits: ModelLimits
    parameters: generations_pb2.GenerationParameters


class Pipeline:
    def __init__(
        self,
        *,
        generations: GenerationsTable,
        library: Library,
        prompt_gap_seconds: float,
        router: Router,
        settings: Callable[[], Settings],
        urls: AudioUrls,
        storage: AudioStorage,
        analyzer: Analyzer | None = None,
    ) -> None:
        self.generations = generations
        self.analyzer = analyzer or Analyzer(library, enabled=lambda: False, timeout=lambda: 0.0)
        self.storage = storage  # where the audio is kept
        self.library = library
        self.prompt_gap_seconds = prompt_gap_seconds  # between the S1 and S2 clips of a voice prompt
        self.router = router
        self.settings = settings
        self.urls = urls  # of the Generation messages it answers with

    # --- admission ----------------------------------------------------------------

    async def admit(
        self,
        account_id: int,
        spec: generations_pb2.GenerationSpec,
        *,
        generation_id: str = "",
        rules: bool = True,
        names: Mapping[str, str] | None = None,
        key_id: int = 0,
    ) -> Admitted:
        """Check `spec` (against this API's rules unless `rules` is off: a dialect checked its own),
        fetch its samples, admit and store it as queued, metered as usage of the key `key_id` (a
        browser token's minting key). `names` maps the spec's fields to what the caller called them,
        so that errors speak the caller's terms."""
        settings = self.settings()
        try:
            if generation_id and not CALLERS_ID.fullmatch(generation_id):
                raise invalid_parameter(
                    "generation_id", "generation_id must be \"gen_\" and 8 to 64 letters, digits, \"-\" or \"_\""
                )
            plan = request.plan(spec, settings.request, rules=rules)
            if plan.parameters.best_of > 1 and not self.analyzer.enabled():
                raise invalid_parameter(
                    "best_of", "best_of above 1 picks candidates by their analysis, which is off on this gateway "
                    "(GATEWAY_ANALYSIS); use best_of 1"
                )
            samples = await self.library.samples(account_id, plan.speakers) if plan.speakers else []
            generation_id = await self.generations.admit(
                stored.NewGeneration(
                    account_id,
                    spec.input,
                    plan.model,
                    plan.speakers,
                    {sample.speaker: sample.speaker_name for sample in samples},
                    plan.parameters,
                    plan.visibility,
                    plan.collection,
                    generation_id,
                    key_id,
                ),
                settings.account,
            )
        except (ApiError, grpc.aio.AioRpcError) as error:
            refusal = error if isinstance(error, ApiError) else ApiError.from_rpc_error(error)
            in_callers_terms(refusal, names or {})
            kind = refusal.reason.lower()
            REFUSED.labels(kind).inc()
            log.info("generation refused", extra={"account_id": account_id, "type": kind})
            raise refusal from None
        return Admitted(generation_id, account_id, plan, samples)

    async def readmit(self, generation_id: str, account_id: int, spec: generations_pb2.GenerationSpec) -> Admitted:
        """An admitted generation again, from its stored spec (a background job resumed elsewhere)."""
        plan = request.plan(spec, self.settings().request, rules=False)
        samples = await self.library.samples(account_id, plan.speakers) if plan.speakers else []
        return Admitted(generation_id, account_id, plan, samples)

    async def analysis(self, account_id: int, generation_id: str) -> generations_pb2.GenerationAnalysis | None:
        """A generation's analysis (analysis.py), once it has succeeded with one; None without, or with the
        database away (it is advice)."""
        try:
            generation = generation_message(await self.generations.get(account_id, generation_id), self.urls)
        except ApiError:
            return None
        return generation.analysis if generation.HasField("analysis") else None

    # --- generating ---------------------------------------------------------------

    async def run(
        self,
        admitted: Admitted,
        timeout: float,
        *,
        announce: Announce = _nothing,
        finish: Finish = as_wav,
        names: Mapping[str, str] | None = None,
        record_cancellation: bool = True,
    ) -> Generated:
        """Generate an admitted generation, its provider calls within `timeout` seconds (all its chunks
        together, for a long script), and store how it ended: canceled when the caller hangs up or the
        run is cancelled, unless `record_cancellation` is off (the canceller records it then)."""
        began = time.perf_counter()
        try:
            prepared = await self._prepare(admitted)
            await announce(prepared.parameters)
            generated = await self._generate(admitted, prepared, timeout, finish)
        except BaseException as error:
            await self._ended_badly(admitted, error, began, names, record_cancellation)
            raise
        GENERATION_SECONDS.labels("succeeded").observe(time.perf_counter() - began)
        return generated

    async def run_streamed(
        self,
        admitted: Admitted,
        timeout: float,
        *,
        announce: Announce = _nothing,
        names: Mapping[str, str] | None = None,
        record_cancellation: bool = True,
    ) -> AsyncIterator[synth_pb2.StreamSynthesizeResponse]:
        """`run`, streamed: the provider's messages (16-bit mono PCM at their sample_rate) as they
        come. Once the last has come the whole is stored as one WAV and the generation has
        succeeded; a caller who goes away (closes this generator) stops it, and it is canceled."""
        began = time.perf_counter()
        try:
            _refuse_best_of(admitted.plan.parameters, STREAMED_BEST_OF)
            prepared = await self._prepare(admitted)
            await announce(prepared.parameters)
            pcm = bytearray()
            last = None
            synthesis_began = time.perf_counter()
            waited: list[float] = []  # seconds spent waiting on the providers
            chunks = self._chunked(admitted, prepared, timeout, waited)
            async with contextlib.aclosing(chunks):
                async for candidate, number, message in chunks:
                    pcm += message.pcm
                    if message.last:
                        last = message
                    yield message
            assert last is not None
            _count_audio(last.duration_seconds, synthesis_began)
            await self._succeeded(
                admitted, wav_of(bytes(pcm), last.sample_rate), last.duration_seconds,
                last.model or candidate.model, last.seed, number + 1, sum(waited),
            )  # fmt: skip
            log.info(
                "generated",
                extra={"generation": admitted.generation_id, "provider": candidate.provider_id, "streamed": True},
            )
        except BaseException as error:
            await self._ended_badly(admitted, error, began, names, record_cancellation)
            raise
        GENERATION_SECONDS.labels("succeeded").observe(time.perf_counter() - began)

    async def _prepare(self, admitted: Admitted) -> _Prepared:
        """The providers that can serve the generation, its voices' prompt cut to leave their model room,
        and its parameters fitted to that room."""
        plan = admitted.plan
        found = await self.router.candidates(plan.model)
        limits = ModelLimits.of_all(found)
        parameters = generations_pb2.GenerationParameters()
        parameters.CopyFrom(plan.parameters)
        parameters.max_audio_prompt_seconds = fitted_prompt_seconds(parameters.max_audio_prompt_seconds, limits)
        voices, transcript, seconds = None, "", 0.0
        if admitted.samples:
            max_seconds, gap = parameters.max_audio_prompt_seconds, self.prompt_gap_seconds
            voices = prompt.voice_prompt(admitted.account_id, admitted.samples, max_seconds, gap)
            transcript = prompt.longest_transcript(admitted.samples)
            seconds = prompt.longest_seconds(admitted.samples, max_seconds, gap)
        parameters.max_new_tokens = fitted_max_new_tokens(
            parameters.max_new_tokens, prompt_frames(seconds, limits), limits
        )
        return _Prepared(voices, transcript, found, limits, parameters)

    async def _generate(self, admitted: Admitted, prepared: _Prepared, timeout: float, finish: Finish) -> Generated:
        if len(self._split(admitted.plan.script.text, prepared)) > 1:
            _refuse_best_of(prepared.parameters, "for a script longer than Dia reads at once (it is made in chunks)")
            return await self._generate_chunks(admitted, prepared, timeout, finish)
        synthesis = synth_pb2.SynthesisSpec(
            script=admitted.plan.script.text,
            settings=synth_settings(prepared.parameters),
            account=str(admitted.account_id),  # the provider's queue takes accounts in turns
        )
        if prepared.voices is not None:
            synthesis.voices.CopyFrom(prepared.voices)
            # Cut between words, the prompt may be shorter than the longest it was fitted to, never longer;
            # but one kept whole for want of word timings can be: then what fits is generated.
            synthesis.settings.lower_max_new_tokens_to_fit = True
        synthesis_began = time.perf_counter()
        analysis = None  # analyzed when it is stored (_succeeded), unless best_of analyzed every candidate
        if prepared.parameters.best_of > 1:
            candidate, reply, analysis = await self._best_of(admitted, prepared, synthesis, timeout)
        else:
            candidate, reply = await self.router.synthesize(
                synthesis, prepared.found, timeout, self._running(admitted.generation_id, prepared.parameters),
                voices_key(admitted.samples),
            )  # fmt: skip
        synthesis_seconds = time.perf_counter() - synthesis_began
        _count_audio(reply.duration_seconds, synthesis_began)
        audio = await finish(reply.wav)
        row = await self._succeeded(
            admitted, reply.wav, reply.duration_seconds, reply.model or candidate.model, reply.seed,
            synthesis_seconds=synthesis_seconds, analysis=analysis,
        )  # fmt: skip
        log.info(
            "generated",
            extra={
                "generation": admitted.generation_id,
                "provider": candidate.provider_id,
                "seconds": round(reply.duration_seconds, 2),
            },
        )
        return Generated(generation_message(row, self.urls), audio)

    async def _best_of(
        self, admitted: Admitted, prepared: _Prepared, synthesis: synth_pb2.SynthesisSpec, timeout: float
    ) -> tuple[Candidate, synth_pb2.SynthesizeResponse, generations_pb2.GenerationAnalysis]:
        """best_of candidates at once (a provider batches them), each with its own seed, each analyzed:
        the best scoring one (analysis.best), with every candidate's scores in its analysis."""
        specs = []
        for index in range(prepared.parameters.best_of):
            spec = synth_pb2.SynthesisSpec()
            spec.CopyFrom(synthesis)
            if spec.settings.HasField("seed"):  # a fixed seed: seed, seed+1, ...; else each draws its own
                spec.settings.seed += index
            specs.append(spec)
        running = self._running(admitted.generation_id, prepared.parameters)
        key = voices_key(admitted.samples)  # one provider holds their voices: the candidates share a batch
        made = [asyncio.ensure_future(self.router.synthesize(spec, prepared.found, timeout, running, key)) for spec in specs]
        try:
            replies = await asyncio.gather(*made)  # the first error as it is
        finally:
            for task in made:  # one failed (or the caller went away): the others stop too
                task.cancel()
        analyses = await self.analyzer.analyze_each(
            admitted.account_id, admitted.plan.script.text, admitted.samples, [reply.wav for _, reply in replies]
        )
        chosen, analysis = best([reply.seed for _, reply in replies], analyses)
        return (*replies[chosen], analysis)

    async def _generate_chunks(
        self, admitted: Admitted, prepared: _Prepared, timeout: float, finish: Finish
    ) -> Generated:
        """A long script, its chunks joined with a short crossfade (long_scripts.py)."""
        parts: list[bytearray] = []
        began = time.perf_counter()
        waited: list[float] = []  # seconds spent waiting on the providers
        chunks = self._chunked(admitted, prepared, timeout, waited)
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
        row = await self._succeeded(
            admitted, wav, duration, last.model or candidate.model, last.seed, len(parts), sum(waited)
        )
        log.info(
            "generated", extra={"generation": admitted.generation_id, "chunks": len(parts), "seconds": round(duration, 2)}
        )
        return Generated(generation_message(row, self.urls), audio)

    async def _chunked(
        self, admitted: Admitted, prepared: _Prepared, timeout: float, waited: list[float]
    ) -> AsyncIterator[tuple[Candidate, int, synth_pb2.StreamSynthesizeResponse]]:
        """The script's chunks generated in order (one for a script that fits the model's window;
        long_scripts.py), streamed: (provider, chunk number, message). Only the final chunk's
        last message is `last`, and it counts the whole (duration, frames). All chunks share the
        `timeout` seconds. Each wait for a provider's next message is added to `waited` (not the
        time its caller takes to take a message: a slow listener is not the provider's time)."""
        deadline = time.monotonic() + timeout
        chunks = self._split(admitted.plan.script.text, prepared)
        previous: tuple[long_scripts.Chunk, synth_pb2.StreamSynthesizeResponse] | None = None  # chunk, its last message
        seconds = frames = 0.0
        for number, chunk in enumerate(chunks):
            parameters = prepared.parameters
            tail = None
            if prepared.voices is None and previous is not None:
                tail = tail_prompt(*previous, parameters.max_audio_prompt_seconds, prepared.limits)
            settings = synth_settings(parameters)
            # The tail prompt is the gateway's, not the caller's: max_new_tokens, which fits without
            # it, is lowered to make room for it (and beside voices, see _generate).
            settings.lower_max_new_tokens_to_fit = tail is not None or prepared.voices is not None
            synthesis = synth_pb2.SynthesisSpec(
                script=chunk.text,
                settings=settings,
                account=str(admitted.account_id),  # the provider's queue takes accounts in turns
            )
            if prepared.voices is not None:
                synthesis.voices.CopyFrom(prepared.voices)  # cloned voices: their samples' prompt again
            elif tail is not None:
                synthesis.codes_prompt.CopyFrom(tail)
            messages = self.router.stream_synthesize(
                synthesis, prepared.found, _left(deadline), self._running(admitted.generation_id, parameters),
                voices_key(admitted.samples),
            )  # fmt: skip
            # A span for each chunk of a long script (tracing on), current while its messages are awaited.
            chunk_span = tracing.start("gateway.chunk", {"chunk.index": number}) if len(chunks) > 1 else None
            try:
                async with contextlib.aclosing(messages):
                    while True:
                        began = time.perf_counter()
                        try:
                            with tracing.using(chunk_span):
                                candidate, message = await anext(messages)
                        except StopAsyncIteration:
                            break
                        except BaseException as error:
                            tracing.failed(chunk_span, error)
                            raise
                        finally:
                            waited.append(time.perf_counter() - began)
                        if message.last:
                            seconds += message.duration_seconds
                            frames += message.generated_frames
                            previous = (chunk, message)  # its codes: what the next chunk continues from
                            if number < len(chunks) - 1:
                                message = synth_pb2.StreamSynthesizeResponse(pcm=message.pcm, sample_rate=message.sample_rate)
                            else:
                                message.duration_seconds, message.generated_frames = seconds, int(frames)
                                message.ClearField("codes")  # the provider's, for a continuation: not the caller's
                                message.ClearField("codebooks")
                        yield candidate, number, message
            finally:
                tracing.end(chunk_span)

    async def _succeeded(
        self,
        admitted: Admitted,
        wav: bytes,
        duration: float,
        model: str,
        seed: int,
        chunks: int = 1,
        synthesis_seconds: float = 0.0,
        analysis: generations_pb2.GenerationAnalysis | None = None,
    ):
        """Analyze the audio (analysis.py) unless `analysis` is given, store it in the object store, then
        the generation as succeeded naming it, with its analysis; the row. If the row is not written (the
        database failed, the generation was canceled or deleted meanwhile), the audio is deleted again
        (storage.py), so no object outlives its row unseen."""
        if analysis is None:
            analysis = await self.analyzer.analyze(admitted.account_id, admitted.plan.script.text, admitted.samples, wav)
        key = generation_key(admitted.account_id, admitted.generation_id)
        async with self.storage.keeping(key):
            await self.storage.objects.put(key, wav, WAV)
            row = await self.generations.mark_succeeded(
                admitted.generation_id, key, len(wav), duration, model, seed, chunks, synthesis_seconds, analysis
            )
            if row is None:  # canceled meanwhile (a background job), or deleted
                raise asyncio.CancelledError()
        return row

    def _split(self, script: str, prepared: _Prepared) -> list[long_scripts.Chunk]:
        """The chunks of `script` that fit the model's window with their prompts (one when it all fits)."""
        window = prepared.limits.text_window_bytes
        cloned = prepared.voices is not None
        transcript = long_scripts.size(prepared.prompt_transcript) + 1 if cloned else 0
        if transcript + long_scripts.size(script) <= window:
            return [long_scripts.Chunk((long_scripts.Piece("", script),), whole=script)]
        reserved = transcript if cloned else long_scripts.TAIL_TEXT_BYTES + 1
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

    def _running(self, generation_id: str, parameters: generations_pb2.GenerationParameters):
        async def running_on(candidate: Candidate) -> None:
            await self.generations.mark_running(generation_id, candidate.provider_id, candidate.model, parameters)

        return running_on

    async def _ended_badly(
        self,
        admitted: Admitted,
        error: BaseException,
        began: float,
        names: Mapping[str, str] | None,
        record_cancellation: bool,
    ) -> None:
        """Count and store a run that did not succeed (the error is raised on by the caller)."""
        canceled = isinstance(error, (asyncio.CancelledError, GeneratorExit))
        GENERATION_SECONDS.labels("canceled" if canceled else "failed").observe(time.perf_counter() - began)
        if canceled and not record_cancellation:
            return
        if isinstance(error, ApiError):
            in_callers_terms(error, names or {})
        # Shielded: a caller who hung up still leaves a finished record behind.
        await asyncio.shield(self._record_failure(admitted.generation_id, error))

    async def _record_failure(self, generation_id: str, error: BaseException) -> None:
        kind, message = error_type(error)
        if kind == "database_unavailable":  # what the history says, not what the caller was told
            message = DATABASE_LOST
        try:
            status = "canceled" if kind == "canceled" else "failed"
            if not await self.generations.end(generation_id, kind, message, status):
                # The caller gets the original error; the history gets the outcome once the database is back.
                log.warning(
                    "the database is down: the generation's outcome is recorded once it answers again",
                    extra={"generation": generation_id, "type": kind},
                )
        except ApiError:
            log.warning("could not record the failure of a generation", extra={"generation": generation_id})


def _refuse_best_of(parameters: generations_pb2.GenerationParameters, why: str) -> None:
    if parameters.best_of > 1:
        raise invalid_parameter("best_of", f"best_of above 1 is not possible {why}; use best_of 1")


def synth_settings(parameters: generations_pb2.GenerationParameters) -> synth_pb2.GenerationSettings:
    """What the provider needs of the parameters (the prompt's length is the gateway's business)."""
    settings = synth_pb2.GenerationSettings(
        cfg_scale=parameters.cfg_scale,
        temperature=parameters.temperature,
        top_p=parameters.top_p,
        cfg_filter_top_k=parameters.cfg_filter_top_k,
        max_new_tokens=parameters.max_new_tokens,
        speed_factor=parameters.speed_factor,
    )
    if parameters.seed != request.RANDOM_SEED:
        settings.seed = parameters.seed
    return settings


def fitted_prompt_seconds(asked: float, limits: ModelLimits) -> float:
    """The longest voice prompt that leaves the model's decoder room for MIN_NEW_FRAMES new frames
    (32.69 s for Dia-1.6B), or `asked` if shorter; in hundredths of a second."""
    most = (limits.decoder_positions - MIN_NEW_FRAMES) * limits.samples_per_frame / limits.sample_rate
    return min(asked, math.floor(most * 100) / 100)


def fitted_max_new_tokens(asked: int, prompt_frames: int, limits: ModelLimits) -> int:
    """`asked`, lowered to what the decoder holds beside a prompt of `prompt_frames`."""
    room = limits.decoder_positions - prompt_frames
    if room <= FRAMES_WITHOUT_AUDIO:  # a prompt kept whole for want of word timings can be this long
        raise invalid_parameter(
            "max_audio_prompt_seconds",
            f"the voice prompt leaves Dia's decoder ({limits.decoder_positions} frames) no room for new audio; "
            "use shorter voice samples or a shorter max_audio_prompt_seconds",
        )
    return min(asked, room)


def prompt_frames(seconds: float, limits: ModelLimits) -> int:
    """The decoder frames a prompt of `seconds` takes: its samples at the model's rate, a frame per samples_per_frame."""
    return math.ceil(round(seconds * limits.sample_rate) / limits.samples_per_frame)


def tail_prompt(
    chunk: long_scripts.Chunk, last: synth_pb2.StreamSynthesizeResponse, max_seconds: float, limits: ModelLimits
) -> synth_pb2.CodesPrompt | None:
    """The end of the previous chunk, to continue its voices from (uncloned speakers): the share of its codes
    (as the provider generated them: never its audio, which speed_factor stretched) that its last words take."""
    text, share = long_scripts.tail(chunk)
    row_bytes = 2 * last.codebooks
    frames = len(last.codes) // row_bytes if row_bytes else 0
    most = int(max_seconds * limits.sample_rate / limits.samples_per_frame)
    count = min(int(frames * share), most)
    if not text or count <= 0:
        return None
    return synth_pb2.CodesPrompt(codes=last.codes[(frames - count) * row_bytes :], codebooks=last.codebooks, transcript=text)


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
