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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, TypeVar

import grpc

from runtime import clients
from runtime.errors import ApiError, invalid_argument
from services.gateway.generation import script
from voice.library.v1 import library_pb2, library_pb2_grpc
from voice.synth.v1 import synth_pb2
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc


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


async def fetch_clips(library: grpc.aio.Channel, account_id: int, speakers: dict[str, int]) -> list[Clip]:
    """The caller's samples for the speakers, in the given order; INVALID_VOICE_SAMPLE or MISSING_TRANSCRIPT."""
    stub = library_pb2_grpc.LibraryServiceStub(library)
    metadata = ((clients.ACCOUNT_ID_METADATA, str(account_id)),)

    async def fetch(speaker: str, sample_id: int) -> Clip:
        param = f"speakers.{speaker}"
        try:
            sample, audio = await in_order(
                [
                    stub.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=sample_id), metadata=metadata),
                    stub.GetVoiceSampleAudio(library_pb2.GetVoiceSampleAudioRequest(id=sample_id), metadata=metadata),
                ]
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # also another account's sample
                raise invalid_argument(
                    "INVALID_VOICE_SAMPLE", f"{param}: there is no voice sample {sample_id} in your library", param
                ) from None
            raise
        found = sample.voice_sample
        if not found.transcript.strip():
            raise invalid_argument(
                "MISSING_TRANSCRIPT",
                f"{param}: voice sample {sample_id} has no transcript, and Dia needs what is said in a "
                "sample to clone its voice; add one to the sample",
                param,
            )
        return Clip(speaker, sample_id, audio.audio.data, found.transcript, found.duration_seconds)

    return await in_order([fetch(speaker, sample_id) for speaker, sample_id in speakers.items()])


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
