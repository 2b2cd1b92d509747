"""Every generation explained: its audio heard against its script by the STT service.

After a generation is made, :meth:`Analyzer.analyze` sends its audio, its script and the
cloned speakers' voice samples to the STT service's AnalyzeSpeech, which times each script
word and speaker turn, scores the word error rate, and the likeness of each cloned speaker's
turns to their sample. What it answers is stored with the generation (GenerationAnalysis)
and gives its captions (captions.py). Analysis is advice: when it is off (GATEWAY_ANALYSIS),
or the STT service is down, busy or slow, the generation succeeds without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import grpc
import prometheus_client

from runtime import clients
from runtime.errors import ApiError
from services.gateway.generation.library import Library, Sample
from voice.gateway.v1 import generations_pb2
from voice.stt.v1 import stt_pb2, stt_pb2_grpc

log = logging.getLogger("gateway.analysis")

ANALYSES = prometheus_client.Counter(
    "gateway_generation_analyses_total",
    "Generations analyzed after they were made, by outcome (analyzed, failed: made and kept without an analysis).",
    ["outcome"],
)
ANALYSIS_SECONDS = prometheus_client.Histogram(
    "gateway_generation_analysis_seconds",
    "Seconds the analysis of a generation's audio added before it was returned (samples fetched, recognition, "
    "scoring).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
WORD_ERROR_RATE = prometheus_client.Histogram(
    "gateway_generation_word_error_rate",
    "Word error rate of what speech recognition heard in a generation's audio against its script.",
    buckets=(0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2),
)
VOICE_SIMILARITY = prometheus_client.Histogram(
    "gateway_generation_voice_similarity",
    "Cosine similarity of a cloned speaker's turns to their voice sample (one observation a cloned speaker).",
    buckets=(0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1),
)


class Analyzer:
    def __init__(self, library: Library, enabled: Callable[[], bool], timeout: Callable[[], float]) -> None:
        self.library = library  # the cloned speakers' samples
        self.enabled = enabled
        self.timeout = timeout
        self.stt: grpc.aio.Channel | None = None

    def start(self) -> None:
        self.stt = clients.service_channel("stt")

    async def close(self) -> None:
        if self.stt is not None:
            await self.stt.close()

    async def analyze(
        self, account_id: int, script: str, samples: list[Sample], wav: bytes
    ) -> generations_pb2.GenerationAnalysis | None:
        """The audio `wav` explained against `script`; None when analysis is off or could not run."""
        return (await self.analyze_each(account_id, script, samples, [wav]))[0]

    async def analyze_each(
        self, account_id: int, script: str, samples: list[Sample], wavs: list[bytes]
    ) -> list[generations_pb2.GenerationAnalysis | None]:
        """Each of `wavs` (best_of's candidates) explained against `script`, the samples fetched once."""
        if not self.enabled() or self.stt is None:
            return [None] * len(wavs)
        try:
            audio = await self.library.audio(account_id, samples) if samples else []
        except (grpc.aio.AioRpcError, ApiError) as error:
            return [_failed(error) for _ in wavs]
        speaker_samples = [
            stt_pb2.SpeakerSample(speaker=sample.speaker, audio=wav) for sample, wav in zip(samples, audio, strict=True)
        ]
        return list(await asyncio.gather(*(self._analyzed(script, speaker_samples, wav) for wav in wavs)))

    async def _analyzed(
        self, script: str, speaker_samples: list[stt_pb2.SpeakerSample], wav: bytes
    ) -> generations_pb2.GenerationAnalysis | None:
        began = time.perf_counter()
        try:
            reply = await stt_pb2_grpc.SttServiceStub(self.stt).AnalyzeSpeech(
                stt_pb2.AnalyzeSpeechRequest(audio=wav, script=script, speaker_samples=speaker_samples),
                timeout=self.timeout(),
            )
        except grpc.aio.AioRpcError as error:
            return _failed(error)
        ANALYSES.labels("analyzed").inc()
        ANALYSIS_SECONDS.observe(time.perf_counter() - began)
        analysis = generation_analysis(reply)
        WORD_ERROR_RATE.observe(analysis.word_error_rate)
        for similarity in analysis.voice_similarity.values():
            VOICE_SIMILARITY.observe(similarity)
        return analysis


def _failed(error: grpc.aio.AioRpcError | ApiError) -> None:
    """Analysis is advice: the generation goes on without it."""
    ANALYSES.labels("failed").inc()
    status = error.code().name if isinstance(error, grpc.aio.AioRpcError) else error.reason
    log.warning("could not analyze a generation; it is kept without an analysis", extra={"status": status})
    return None


def generation_analysis(reply: stt_pb2.AnalyzeSpeechResponse) -> generations_pb2.GenerationAnalysis:
    return generations_pb2.GenerationAnalysis(
        words=[
            generations_pb2.TimedWord(
                text=word.text, speaker=word.speaker, heard=word.heard,
                start_seconds=round(word.start_seconds, 3), end_seconds=round(word.end_seconds, 3),
            )  # fmt: skip
            for word in reply.words
        ],
        turns=[
            generations_pb2.SpeakerTiming(
                speaker=turn.speaker, text=turn.text, heard=turn.heard,
                start_seconds=round(turn.start_seconds, 3), end_seconds=round(turn.end_seconds, 3),
            )  # fmt: skip
            for turn in reply.turns
        ],
        word_error_rate=round(reply.word_error_rate, 4),
        voice_similarity={item.speaker: round(item.similarity, 4) for item in reply.voice_similarities},
        transcript=reply.transcript,
    )


def score(analysis: generations_pb2.GenerationAnalysis) -> float:
    """How good a candidate sounds: its cloned voices' mean similarity (0 with nobody cloned) less its
    word error rate. Higher is better."""
    similarities = list(analysis.voice_similarity.values())
    return (sum(similarities) / len(similarities) if similarities else 0.0) - analysis.word_error_rate


def best(seeds: list[int], analyses: list[generations_pb2.GenerationAnalysis | None]) -> tuple[int, generations_pb2.GenerationAnalysis]:
    """The index of the best scoring candidate (the first when none could be analyzed), and its analysis
    with every candidate's scores in `candidates`."""
    scores = [score(analysis) if analysis is not None else None for analysis in analyses]
    scored = [index for index, value in enumerate(scores) if value is not None]
    chosen = max(scored, key=lambda index: scores[index]) if scored else 0
    result = generations_pb2.GenerationAnalysis()
    if analyses[chosen] is not None:
        result.CopyFrom(analyses[chosen])
    for index, (seed, analysis) in enumerate(zip(seeds, analyses)):
        candidate = result.candidates.add(seed=seed, chosen=index == chosen, unanalyzed=analysis is None)
        if analysis is not None:
            candidate.word_error_rate = analysis.word_error_rate
            candidate.voice_similarity.update(analysis.voice_similarity)
            candidate.score = round(scores[index], 4)
    return chosen, result
