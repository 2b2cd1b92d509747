"""The SttService: audio in any format → transcode → faster-whisper → transcript."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import grpc
import prometheus_client

from runtime import clients, tracing
from runtime.errors import ApiError, invalid_argument
from runtime.server import Servicer, ServiceSpec
from services.stt import analysis, config, sample_checks
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
ANALYSIS_SECONDS = prometheus_client.Histogram(
    "stt_analysis_seconds_per_audio_second",
    "AnalyzeSpeech's recognition and scoring time per second of the analyzed audio.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5),
)
SPEAKERS = ("S1", "S2")

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
        self.voices: analysis.Voices | None = None  # the speaker encoder, loaded in start()
        self.limiter = ConcurrencyLimiter(
            config.STT_MAX_CONCURRENCY.value, config.STT_MAX_QUEUE.value
        )
        self.transcode_channel: grpc.aio.Channel | None = None
        QUEUE_DEPTH.set_function(lambda: max(self.limiter.admitted - self.limiter.running, 0))
        RUNNING.set_function(lambda: self.limiter.running)

    def _loaded(self) -> Recognizer:
        if self.recognizer is None:  # a caller that did not wait for SERVING
            raise ApiError(
                grpc.StatusCode.UNAVAILABLE, "MODEL_LOADING", "the speech model is still loading; try again shortly"
            )
        return self.recognizer

    async def _decoded(self, audio: bytes, param: str) -> bytes:
        """`audio` as the transcode service's 44.1 kHz mono WAV, within STT_MAX_AUDIO_SECONDS."""
        if not audio:
            raise invalid_argument("MISSING_AUDIO", f"{param} is empty: send the audio to analyze", param=param)
        decoded = await transcode_pb2_grpc.TranscodeServiceStub(self.transcode_channel).DecodeAudio(
            transcode_pb2.DecodeAudioRequest(audio=audio, max_duration_seconds=config.STT_MAX_AUDIO_SECONDS.value)
        )
        return decoded.wav

    async def start(self) -> None:
        # Loading takes seconds (longer for a download): off the event loop, so
        # health checks keep answering NOT_SERVING meanwhile.
        # The speaker encoder first: a loaded recognizer is what says the service can answer (_loaded).
        self.voices = await asyncio.to_thread(analysis.Voices)
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
        language = normalize_language(request.language, self._loaded().languages)
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

    async def AnalyzeSpeech(self, request, context):
        recognizer = self._loaded()
        language = normalize_language(request.language, recognizer.languages)
        if not analysis.script_turns(request.script):
            raise invalid_argument("MISSING_SCRIPT", "script has no words to look for in the audio", param="script")
        speakers = [sample.speaker for sample in request.speaker_samples]
        if any(speaker not in SPEAKERS for speaker in speakers) or len(set(speakers)) < len(speakers):
            raise invalid_argument(
                "INVALID_SPEAKER", "speaker_samples name S1 or S2, each at most once", param="speaker_samples"
            )
        try:
            async with self.limiter.admit():
                wav = await self._decoded(request.audio, "audio")
                samples = {
                    sample.speaker: await self._decoded(sample.audio, "speaker_samples.audio")
                    for sample in request.speaker_samples
                }
                began = time.perf_counter()
                result = await self.limiter.run(
                    analysis.analyze, recognizer, self.voices, wav, request.script, language, samples
                )
        except LimiterFull:
            raise busy(self.limiter) from None
        seconds = result.transcript.duration_seconds
        if seconds > 0:
            ANALYSIS_SECONDS.observe((time.perf_counter() - began) / seconds)
        return stt_pb2.AnalyzeSpeechResponse(
            words=[
                stt_pb2.ScriptWord(
                    text=word.text, speaker=word.speaker, turn=word.turn, heard=word.heard,
                    start_seconds=word.start_seconds, end_seconds=word.end_seconds,
                )  # fmt: skip
                for word in result.words
            ],
            turns=[
                stt_pb2.SpeakerTurn(
                    speaker=turn.speaker, text=turn.text, heard=turn.heard,
                    start_seconds=turn.start_seconds, end_seconds=turn.end_seconds,
                )  # fmt: skip
                for turn in result.turns
            ],
            word_error_rate=result.word_error_rate,
            voice_similarities=[
                stt_pb2.VoiceSimilarity(speaker=speaker, similarity=similarity)
                for speaker, similarity in sorted(result.similarities.items())
            ],
            transcript=result.transcript.text,
            duration_seconds=seconds,
        )

    async def CheckSample(self, request, context):
        self._loaded()
        thresholds = sample_checks.Thresholds(
            min_seconds=config.STT_SAMPLE_MIN_SECONDS.value,
            max_seconds=config.STT_SAMPLE_MAX_SECONDS.value,
            max_silence_ratio=config.STT_SAMPLE_MAX_SILENCE_RATIO.value,
            max_clipped_ratio=config.STT_SAMPLE_MAX_CLIPPED_RATIO.value,
            same_speaker_similarity=config.STT_SAMPLE_SAME_SPEAKER_SIMILARITY.value,
        )
        try:
            async with self.limiter.admit():
                wav = await self._decoded(request.audio, "audio")
                check = await self.limiter.run(sample_checks.check_sample, self.voices, wav, thresholds)
        except LimiterFull:
            raise busy(self.limiter) from None
        return stt_pb2.CheckSampleResponse(
            warnings=[stt_pb2.SampleWarning(code=code, message=message) for code, message in check.warnings],
            duration_seconds=check.duration_seconds,
            silence_ratio=check.silence_ratio,
            clipped_ratio=check.clipped_ratio,
            least_window_similarity=check.least_window_similarity,
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
