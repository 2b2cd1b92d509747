"""The voice-cloning prompt: the callers' voice samples, joined into the audio Dia continues from.

For each cloned speaker (S1 first, then S2) the sample's transcript and audio
come from the library, as the caller's account. The clips are joined by the
transcode service with GATEWAY_PROMPT_GAP_SECONDS of silence between them.

The prompt is at most ``max_audio_prompt_seconds`` long, gap included. When
both speakers are cloned they share that time equally, so that both voices
stay in the prompt however long either sample is; a clip shorter than its
share leaves the rest to the other. A clip longer than its share is cut at
its end. Its transcript stays whole: the library holds no word timings to cut
it by, and the spec's own "truncated to this length" has the same effect.

Assembled prompts are kept in a :class:`PromptCache` by the samples'
identity and content (id, transcript, length, update time, as the library
reports them for every request) and the request's cut: the same voices cost
one small look-up per speaker, not their audio and a join. A sample that
changes gets a new update time, so its old prompts are never used again; a
deleted one is not found.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Awaitable, TypeVar

import grpc
import prometheus_client

from runtime import clients
from runtime.errors import ApiError, invalid_argument
from services.gateway.generation import script
from voice.library.v1 import library_pb2, library_pb2_grpc
from voice.synth.v1 import synth_pb2
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc


PROMPT_CACHE = prometheus_client.Counter(
    "gateway_prompt_cache_total", "Voice-cloning prompts asked of the cache, by result (hit, miss).", ["result"]
)


@dataclass(frozen=True)
class Sample:
    """A cloned speaker's voice sample as the library describes it (its audio is fetched apart)."""

    speaker: str  # "S1" or "S2"
    sample_id: int
    transcript: str
    duration_seconds: float
    version: int  # the sample's update time in nanoseconds: a changed sample has a new one


@dataclass(frozen=True)
class Clip:
    speaker: str  # "S1" or "S2"
    sample_id: int
    wav: bytes
    transcript: str
    duration_seconds: float

    @property
    def param(self) -> str:
        return f"speakers.{self.speaker}"


def shares(durations: list[float], max_seconds: float, gap_seconds: float) -> list[float]:
    """How many seconds of each clip the prompt keeps (see the module's docstring)."""
    budget = max_seconds - gap_seconds * (len(durations) - 1)
    kept = [0.0] * len(durations)
    # Shortest first: what a short clip does not use goes to the longer ones.
    order = sorted(range(len(durations)), key=lambda index: durations[index])
    for position, index in enumerate(order):
        kept[index] = min(durations[index], budget / (len(order) - position))
        budget -= kept[index]
    return kept


T = TypeVar("T")


async def in_order(calls: list[Awaitable[T]]) -> list[T]:
    """Run the calls at once; if any fail, raise the error of the first in order (S1's before S2's)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def fetch_samples(library: grpc.aio.Channel, account_id: int, speakers: dict[str, int]) -> list[Sample]:
    """The caller's samples for the speakers, in the given order; INVALID_VOICE_SAMPLE or MISSING_TRANSCRIPT."""
    stub = library_pb2_grpc.LibraryServiceStub(library)
    metadata = ((clients.ACCOUNT_ID_METADATA, str(account_id)),)

    async def fetch(speaker: str, sample_id: int) -> Sample:
        param = f"speakers.{speaker}"
        try:
            reply = await stub.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=sample_id), metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise _not_yours(error, param, sample_id) from None
        found = reply.voice_sample
        if not found.transcript.strip():
            raise invalid_argument(
                "MISSING_TRANSCRIPT",
                f"{param}: voice sample {sample_id} has no transcript, and Dia needs what is said in a "
                "sample to clone its voice; add one to the sample",
                param,
            )
        return Sample(speaker, sample_id, found.transcript, found.duration_seconds, found.update_time.ToNanoseconds())

    return await in_order([fetch(speaker, sample_id) for speaker, sample_id in speakers.items()])


async def fetch_clips(library: grpc.aio.Channel, account_id: int, samples: list[Sample]) -> list[Clip]:
    """The samples with their audio, in the given order."""
    stub = library_pb2_grpc.LibraryServiceStub(library)
    metadata = ((clients.ACCOUNT_ID_METADATA, str(account_id)),)

    async def fetch(sample: Sample) -> Clip:
        try:
            reply = await stub.GetVoiceSampleAudio(
                library_pb2.GetVoiceSampleAudioRequest(id=sample.sample_id), metadata=metadata
            )
        except grpc.aio.AioRpcError as error:  # deleted since it was described
            raise _not_yours(error, f"speakers.{sample.speaker}", sample.sample_id) from None
        return Clip(sample.speaker, sample.sample_id, reply.audio.data, sample.transcript, sample.duration_seconds)

    return await in_order([fetch(sample) for sample in samples])


def _not_yours(error: grpc.aio.AioRpcError, param: str, sample_id: int) -> BaseException:
    if error.code() == grpc.StatusCode.NOT_FOUND:  # also another account's sample
        return invalid_argument(
            "INVALID_VOICE_SAMPLE", f"{param}: there is no voice sample {sample_id} in your library", param
        )
    return error


class PromptCache:
    """Assembled prompts, least recently used first out, within a budget of bytes (0: no cache)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._prompts: collections.OrderedDict[tuple, synth_pb2.AudioPrompt] = collections.OrderedDict()

    @staticmethod
    def key(account_id: int, samples: list[Sample], max_seconds: float, gap_seconds: float) -> tuple:
        return (account_id, tuple(samples), max_seconds, gap_seconds)

    def get(self, key: tuple) -> synth_pb2.AudioPrompt | None:
        found = self._prompts.get(key)
        PROMPT_CACHE.labels("miss" if found is None else "hit").inc()
        if found is not None:
            self._prompts.move_to_end(key)
        return found

    def put(self, key: tuple, assembled: synth_pb2.AudioPrompt) -> None:
        size = assembled.ByteSize()
        if size > self.max_bytes or key in self._prompts:
            return
        self._prompts[key] = assembled
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._prompts.popitem(last=False)
            self.bytes -= dropped.ByteSize()


async def assemble(
    transcode: grpc.aio.Channel, clips: list[Clip], max_seconds: float, gap_seconds: float
) -> synth_pb2.AudioPrompt:
    """One 44.1 kHz mono WAV of the clips, cut to their shares, with its tagged transcript."""
    stub = transcode_pb2_grpc.TranscodeServiceStub(transcode)
    kept = shares([clip.duration_seconds for clip in clips], max_seconds, gap_seconds)

    async def alone(clip: Clip, seconds: float) -> bytes:
        """The clip decoded on its own, cut to `seconds` (0: whole); its errors name its speaker."""
        try:
            reply = await stub.ConcatenateAudio(
                transcode_pb2.ConcatenateAudioRequest(clips=[clip.wav], max_duration_seconds=seconds)
            )
        except grpc.aio.AioRpcError as error:
            raise _said_of(clip, error) from None
        return reply.wav

    if all(seconds >= clip.duration_seconds for clip, seconds in zip(clips, kept)):
        parts = [clip.wav for clip in clips]  # nothing to cut: the joining call alone will do
    else:
        parts = await in_order([alone(clip, seconds) for clip, seconds in zip(clips, kept)])
    try:
        joined = await stub.ConcatenateAudio(
            # The overall cap catches rounding: the prompt never exceeds the request's limit.
            transcode_pb2.ConcatenateAudioRequest(clips=parts, gap_seconds=gap_seconds, max_duration_seconds=max_seconds)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            await in_order([alone(clip, 0.0) for clip in clips])  # raises for the speaker whose sample is at fault
        raise
    transcript = script.prompt_transcript({clip.speaker: clip.transcript for clip in clips})
    return synth_pb2.AudioPrompt(wav=joined.wav, transcript=transcript)


def _said_of(clip: Clip, error: grpc.aio.AioRpcError) -> ApiError:
    refusal = ApiError.from_rpc_error(error)
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return refusal  # the transcode service is down or failed: not the sample's fault
    refusal.message = f"{clip.param}: voice sample {clip.sample_id}: {refusal.message}"
    refusal.param = clip.param
    return refusal
