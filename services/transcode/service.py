"""The gRPC face of the transcode service: requests in, :mod:`audio` calls, responses out.

Decoding and encoding are CPU work that would stall every other call on the
event loop, so each RPC runs in a small thread pool (TRANSCODE_WORKERS
threads; FFmpeg and numpy release the GIL while they work).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, TypeVar

import numpy as np

from runtime.errors import invalid_parameter
from runtime.server import ServiceSpec, Servicer
from services.transcode import audio, config, decoder, encoder
from services.transcode.audio import Format, Limits
from services.transcode.pcm import SAMPLE_RATE
from voice.transcode.v1 import transcode_pb2 as pb
from voice.transcode.v1 import transcode_pb2_grpc

T = TypeVar("T")

FORMATS = {
    pb.AUDIO_FORMAT_WAV: Format.WAV,
    pb.AUDIO_FORMAT_FLAC: Format.FLAC,
    pb.AUDIO_FORMAT_MP3: Format.MP3,
    pb.AUDIO_FORMAT_OGG_OPUS: Format.OGG_OPUS,
    pb.AUDIO_FORMAT_AAC: Format.AAC,
    pb.AUDIO_FORMAT_PCM: Format.PCM,
}


def limits_from_settings() -> Limits:
    """The limits of the TRANSCODE_* settings (their casts refuse 0 and below at start-up)."""
    return Limits(
        max_input_bytes=config.MAX_INPUT_BYTES.value,
        max_duration_seconds=config.MAX_DURATION_SECONDS.value,
        timeout_seconds=config.DECODE_TIMEOUT_SECONDS.value,
    )


class TranscodeService(transcode_pb2_grpc.TranscodeServiceServicer):
    def __init__(self, limits: Limits, workers: int) -> None:
        self.limits = limits
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="transcode")

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)  # in-flight calls have finished by now

    async def DecodeAudio(self, request: pb.DecodeAudioRequest, context) -> pb.DecodeAudioResponse:
        wav, info = await self._off_loop(self._decode, request.audio, request.max_duration_seconds)
        return pb.DecodeAudioResponse(wav=wav, info=info)

    async def StreamingDecodeAudio(
        self, requests: AsyncIterator[pb.StreamingDecodeAudioRequest], context
    ) -> pb.StreamingDecodeAudioResponse:
        pieces: list[bytes] = []
        received = 0
        max_duration_seconds = None
        async for request in requests:
            if max_duration_seconds is None:
                max_duration_seconds = request.max_duration_seconds
            piece = request.audio  # reading a bytes field copies it: once
            received += len(piece)
            if received > self.limits.max_input_bytes:  # refused now, not after the rest has come
                raise decoder.too_large(self.limits.max_input_bytes)
            pieces.append(piece)
        data = b"".join(pieces)
        del pieces
        wav, info = await self._off_loop(self._decode, data, max_duration_seconds or 0.0)
        return pb.StreamingDecodeAudioResponse(wav=wav, info=info)

    async def ConcatenateAudio(
        self, request: pb.ConcatenateAudioRequest, context
    ) -> pb.ConcatenateAudioResponse:
        return await self._off_loop(self._concatenate, request)

    async def ChangeSpeed(self, request: pb.ChangeSpeedRequest, context) -> pb.ChangeSpeedResponse:
        return await self._off_loop(self._change_speed, request)

    async def EncodeAudio(self, request: pb.EncodeAudioRequest, context) -> pb.EncodeAudioResponse:
        return await self._off_loop(self._encode, request)

    async def StreamEncodeAudio(self, requests: AsyncIterator[pb.StreamEncodeAudioRequest], context):
        streaming = None
        async for request in requests:
            if streaming is None:
                streaming = self._streaming_encoder(request)
            pcm = np.frombuffer(request.pcm[: len(request.pcm) // 2 * 2], dtype="<i2")
            yield pb.StreamEncodeAudioResponse(
                audio=await self._off_loop(streaming.push, pcm), content_type=encoder.CONTENT_TYPES[streaming.fmt]
            )
        if streaming is not None:
            yield pb.StreamEncodeAudioResponse(
                audio=await self._off_loop(streaming.finish), content_type=encoder.CONTENT_TYPES[streaming.fmt]
            )

    def _streaming_encoder(self, request: pb.StreamEncodeAudioRequest) -> encoder.StreamingEncoder:
        fmt = _format(request.format)
        audio.check_encoding(fmt, request.bit_rate, request.sample_rate)
        return encoder.StreamingEncoder(fmt, request.bit_rate, request.sample_rate or SAMPLE_RATE)

    async def _off_loop(self, work: Callable[..., T], *args) -> T:
        # Copy the context so log lines from the worker keep the call's request id.
        call = functools.partial(contextvars.copy_context().run, work, *args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    # The blocking halves, run in the pool.

    def _decode(self, data: bytes, max_duration_seconds: float) -> tuple[bytes, pb.AudioInfo]:
        decoded = audio.decode(data, self.limits, max_duration_seconds)
        source = decoded.source
        info = pb.AudioInfo(
            duration_seconds=decoded.pcm.duration_seconds,
            sample_rate=SAMPLE_RATE,
            source_format=source.format,
            source_codec=source.codec,
            source_sample_rate=source.sample_rate,
            source_channels=source.channels,
        )
        return decoded.pcm.wav(), info

    def _concatenate(self, request: pb.ConcatenateAudioRequest) -> pb.ConcatenateAudioResponse:
        pcm = audio.concatenate(
            list(request.clips), self.limits, request.gap_seconds, request.max_duration_seconds
        )
        return pb.ConcatenateAudioResponse(wav=pcm.wav(), duration_seconds=pcm.duration_seconds)

    def _change_speed(self, request: pb.ChangeSpeedRequest) -> pb.ChangeSpeedResponse:
        pcm = audio.change_speed(request.audio, request.speed_factor, self.limits)
        return pb.ChangeSpeedResponse(wav=pcm.wav(), duration_seconds=pcm.duration_seconds)

    def _encode(self, request: pb.EncodeAudioRequest) -> pb.EncodeAudioResponse:
        fmt = _format(request.format)
        encoded = audio.encode(request.audio, fmt, request.bit_rate, self.limits, request.sample_rate)
        return pb.EncodeAudioResponse(
            audio=encoded.audio, content_type=encoded.content_type, duration_seconds=encoded.duration_seconds
        )


def _format(value: int) -> Format:
    fmt = FORMATS.get(value)
    if fmt is None:
        names = ", ".join(pb.AudioFormat.Name(value) for value in FORMATS)
        raise invalid_parameter("format", f"format must be one of {names}")
    return fmt


# What transcode publishes (runtime/limits.py), for the services that send it audio.
LIMITS = {
    "input_bytes": config.MAX_INPUT_BYTES,
    "duration_seconds": config.MAX_DURATION_SECONDS,
    "decode_timeout_seconds": config.DECODE_TIMEOUT_SECONDS,
}


def build_spec() -> ServiceSpec:
    service = TranscodeService(limits_from_settings(), config.WORKERS.value)
    return ServiceSpec(
        name="transcode",
        servicers=[
            Servicer(
                transcode_pb2_grpc.add_TranscodeServiceServicer_to_server,
                service,
                "voice.transcode.v1.TranscodeService",
            )
        ],
        on_stop=service.close,
        limits=LIMITS,
    )
