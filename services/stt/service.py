"""The SttService: audio in any format → transcode → faster-whisper → transcript."""

from __future__ import annotations

import asyncio
import logging
import re

import grpc
import prometheus_client

from runtime import clients, tracing
from runtime.errors import ApiError, invalid_argument
from runtime.server import Servicer, ServiceSpec
from services.stt import config
from services.stt.limiter import ConcurrencyLimiter, LimiterFull
from services.stt.recognizer import Recognizer
from voice.stt.v1 import stt_pb2, stt_pb2_grpc
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc

log = logging.getLogger("stt.service")

# Read from the limiter at each scrape.
QUEUE_DEPTH = prometheus_client.Gauge(
    "stt_queue_depth", "Transcriptions admitted and waiting for a slot (at most STT_MAX_QUEUE)."
)
RUNNING = prometheus_client.Gauge(
    "stt_transcriptions_running", "Transcriptions running now (at most STT_MAX_CONCURRENCY)."
)

# "en", "EN", "en-US", "en_GB": the part before a region is the language.
_LANGUAGE_TAG = re.compile(r"^([a-z]{2,3})(?:[-_][a-z0-9]+)*$")


def normalize_language(requested: str, supported: list[str]) -> str | None:
    """The language to transcribe in, or None to detect it; refuses one the model lacks."""
    tag = requested.strip().lower()
    if not tag:
        return None
    match = _LANGUAGE_TAG.match(tag)
    if match is None or match.group(1) not in supported:
        if supported == ["en"]:
            message = f"language {requested!r} is not supported: the loaded model transcribes English (en) only"
        else:
            message = f"language {requested!r} is not supported; use an ISO 639-1 code such as 'en', or empty to detect"
        raise invalid_argument("UNSUPPORTED_LANGUAGE", message, param="language")
    return match.group(1)


def busy(limiter: ConcurrencyLimiter) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "STT_BUSY",
        f"speech recognition is busy ({limiter.concurrency} running, {limiter.queue} waiting); "
        "try again shortly",
    )


class Stt(stt_pb2_grpc.SttServiceServicer):
    def __init__(self) -> None:
        self.recognizer: Recognizer | None = None  # loaded in start()
        self.limiter = ConcurrencyLimiter(
            config.STT_MAX_CONCURRENCY.value, config.STT_MAX_QUEUE.value
        )
        self.transcode_channel: grpc.aio.Channel | None = None
        QUEUE_DEPTH.set_function(lambda: max(self.limiter.admitted - self.limiter.running, 0))
        RUNNING.set_function(lambda: self.limiter.running)

    async def start(self) -> None:
        # Loading takes seconds (longer for a download): off the event loop, so
        # health checks keep answering NOT_SERVING meanwhile.
        self.recognizer = await asyncio.to_thread(
            Recognizer,
            config.STT_MODEL.value,
            config.STT_DEVICE.value,
            config.STT_COMPUTE_TYPE.value,
            self.limiter.concurrency,
        )
        self.transcode_channel = clients.service_channel("transcode")

    async def stop(self) -> None:
        if self.transcode_channel is not None:
            await self.transcode_channel.close()
        self.limiter.close()

    async def Transcribe(self, request, context):
        if self.recognizer is None:  # a caller that did not wait for SERVING
            raise ApiError(
                grpc.StatusCode.UNAVAILABLE, "MODEL_LOADING", "the speech model is still loading; try again shortly"
            )
        language = normalize_language(request.language, self.recognizer.languages)
        try:
            async with self.limiter.admit():
                # Transcode errors (AUDIO_DECODE_FAILED, AUDIO_TOO_LONG, ...) reach
                # the client as they are: the server interceptor re-raises them.
                decoded = await transcode_pb2_grpc.TranscodeServiceStub(
                    self.transcode_channel
                ).DecodeAudio(
                    transcode_pb2.DecodeAudioRequest(
                        audio=request.audio,
                        max_duration_seconds=config.STT_MAX_AUDIO_SECONDS.value,
                    )
                )
                with tracing.span("stt.recognize"):  # a free slot, then the speech model
                    transcript = await self.limiter.run(
                        self.recognizer.transcribe, decoded.wav, language, request.word_timestamps
                    )
        except LimiterFull:
            raise busy(self.limiter) from None
        log.info(
            "transcribed",
            extra={"audio_seconds": round(transcript.duration_seconds, 2),
                   "language": transcript.language, "characters": len(transcript.text)},
        )
        return stt_pb2.TranscribeResponse(
            text=transcript.text,
            language=transcript.language,
            language_probability=transcript.language_probability,
            duration_seconds=transcript.duration_seconds,
            segments=[
                stt_pb2.Segment(
                    start_seconds=s.start_seconds,
                    end_seconds=s.end_seconds,
                    text=s.text,
                    words=[
                        stt_pb2.Word(start_seconds=w.start_seconds, end_seconds=w.end_seconds, text=w.text)
                        for w in s.words
                    ],
                )
                for s in transcript.segments
            ],
        )


# What stt publishes (runtime/limits.py), for the services that send it audio.
LIMITS = {"audio_seconds": config.STT_MAX_AUDIO_SECONDS}


def build_spec() -> ServiceSpec:
    stt = Stt()
    return ServiceSpec(
        name="stt",
        servicers=[
            Servicer(
                stt_pb2_grpc.add_SttServiceServicer_to_server,
                stt,
                stt_pb2.DESCRIPTOR.services_by_name["SttService"].full_name,
            )
        ],
        on_start=stt.start,
        on_stop=stt.stop,
        limits=LIMITS,
    )
