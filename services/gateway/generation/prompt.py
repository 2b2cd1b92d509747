"""The voice-cloning prompt: the callers' voice samples, joined into the audio Dia continues from.

For each cloned speaker (S1 first, then S2) the sample's transcript and audio
come from the library, as the caller's account. The clips are joined by the
transcode service with GATEWAY_PROMPT_GAP_SECONDS of silence between them.

The prompt is at most ``max_audio_prompt_seconds`` long, gap included. When
both speakers are cloned they share that time equally, so that both voices
stay in the prompt however long either sample is; a clip shorter than its
share leaves the rest to the other.

A clip longer than its share is cut between two words, and its transcript
with it: Dia speaks whatever words of the transcript the audio lacks at the
start of its output. The STT service times the words of the clip's start
(:func:`cut_between_words`); the clip is cut after the last word that ends
within its share, and the stored transcript is aligned word by word with the
words heard (:func:`said_before`) to keep the words said before the cut.
When no whole word fits in the share, the request is refused
(``invalid_parameter`` naming max_audio_prompt_seconds). When the recognizer
is down, too slow (GATEWAY_PROMPT_STT_TIMEOUT_SECONDS) or hears no words, the
clip is kept whole with its whole transcript (the prompt is then longer than
asked, but says what its transcript says), and that prompt is not cached.

Assembled prompts are kept in a :class:`PromptCache` by the samples'
identity and content (id, transcript, length, update time, as the library
reports them for every request) and the request's cut: the same voices cost
one small look-up per speaker, not their audio and a join. A sample that
changes gets a new update time, so its old prompts are never used again; a
deleted one is not found.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass

import grpc
import prometheus_client

from runtime import clients, tracing
from runtime.caches import ByteBudgetCache
from runtime.errors import ApiError, invalid_parameter
from services.gateway.config import PROMPT_STT_TIMEOUT_SECONDS
from services.gateway.generation import script
from services.gateway.generation.library import Clip, Library, Sample, in_order
from voice.stt.v1 import stt_pb2, stt_pb2_grpc
from voice.synth.v1 import synth_pb2
from voice.transcode.v1 import transcode_pb2, transcode_pb2_grpc

log = logging.getLogger("gateway.prompt")

PROMPT_CACHE = prometheus_client.Counter(
    "gateway_prompt_cache_total", "Voice-cloning prompts asked of the cache, by result (hit, miss).", ["result"]
)


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


class Prompts:
    """The voice-cloning prompts of generations: fetched, cut, joined, and kept in a cache."""

    def __init__(self, library: Library, cache_bytes: int, gap_seconds: float) -> None:
        self.library = library
        self.cache = PromptCache(cache_bytes)
        self.gap_seconds = gap_seconds
        self.transcode: grpc.aio.Channel | None = None
        self.stt: grpc.aio.Channel | None = None  # times the words of samples cut to fit a prompt

    def start(self) -> None:
        self.transcode = clients.service_channel("transcode")
        self.stt = clients.service_channel("stt")

    async def close(self) -> None:
        for channel in (self.transcode, self.stt):
            if channel is not None:
                await channel.close()

    async def prompt(self, account_id: int, samples: list[Sample], max_seconds: float) -> synth_pb2.AudioPrompt:
        """The prompt of the samples cut to `max_seconds`, from the cache when they are unchanged."""
        key = PromptCache.key(account_id, samples, max_seconds, self.gap_seconds)
        assembled = self.cache.get(key)
        with tracing.span("gateway.prompt", {"prompt.cache": "miss" if assembled is None else "hit"}):
            if assembled is None:
                clips = await self.library.clips(account_id, samples)
                made = await assemble(self.transcode, clips, max_seconds, self.gap_seconds, self.stt)
                assembled = made.prompt
                if made.exact:  # a sample kept whole for want of word timings is cut properly next time
                    self.cache.put(key, assembled)
        return assembled


class PromptCache(ByteBudgetCache[tuple, synth_pb2.AudioPrompt]):
    """Assembled prompts, least recently used first out, within a budget of bytes (0: no cache)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, lambda assembled: assembled.ByteSize())

    @staticmethod
    def key(account_id: int, samples: list[Sample], max_seconds: float, gap_seconds: float) -> tuple:
        return (account_id, tuple(samples), max_seconds, gap_seconds)

    def get(self, key: tuple) -> synth_pb2.AudioPrompt | None:
        found = super().get(key)
        PROMPT_CACHE.labels("miss" if found is None else "hit").inc()
        return found


@dataclass(frozen=True)
class Word:
    """A word the recognizer heard, and when (seconds from the clip's start)."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Cut:
    seconds: float  # where the clip is cut
    transcript: str  # the words of its transcript said before that


# Seconds of audio past a clip's share that the recognizer hears too, so that
# the word running over the end of the share is heard whole (and left out).
LISTEN_PAST_SHARE_SECONDS = 2.0
# Below this share of words in common, a stored transcript is taken to say
# something else than the audio, and the recognizer's words are used instead.
MIN_AGREEMENT = 0.5


def _plain(word: str) -> str:
    return re.sub(r"[^\w']+", "", word.lower())


def said_before(heard: list[str], kept: int, transcript: str) -> str:
    """The words of `transcript` that the first `kept` of the `heard` words stand for.

    The two are aligned word by word, ignoring case and punctuation; where
    they differ ("25" heard, "twenty five" written) the written words are
    shared out in proportion. When they have too little in common the
    recognizer's own first `kept` words are returned: they are what the audio says.
    """
    written = transcript.split()
    matcher = difflib.SequenceMatcher(a=[_plain(w) for w in heard], b=[_plain(w) for w in written], autojunk=False)
    if matcher.ratio() < MIN_AGREEMENT:
        return " ".join(heard[:kept])
    count = 0
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if i1 >= kept:  # from here on, words said after the cut (and written words between: not heard before it)
            break
        if tag == "equal":
            count = j1 + min(kept, i2) - i1
        elif tag == "replace":
            count = j1 + round((min(kept, i2) - i1) * (j2 - j1) / (i2 - i1))
        elif tag == "insert":  # written, not heard, before the cut
            count = j2
        else:  # "delete": heard, not written
            count = j1
    return " ".join(written[:count])


def cut_between_words(words: list[Word], transcript: str, seconds: float) -> Cut | None:
    """Where to cut a clip to keep at most `seconds` of it without splitting a word, and the
    words of its `transcript` said before that point; None if not even its first word fits."""
    kept = 0
    while kept < len(words) and words[kept].end <= seconds:
        kept += 1
    if kept == 0:
        return None
    # After the last whole word, up to the next one's start (its timing is rough) within the share.
    following = words[kept].start if kept < len(words) else seconds
    cut = max(words[kept - 1].end, min(seconds, following))
    return Cut(cut, said_before([word.text for word in words], kept, transcript))


async def heard_words(stt: grpc.aio.Channel, wav: bytes, param: str) -> list[Word]:
    """The words the recognizer hears in `wav` with their times; none when it cannot say."""
    try:
        reply = await stt_pb2_grpc.SttServiceStub(stt).Transcribe(
            stt_pb2.TranscribeRequest(audio=wav, word_timestamps=True), timeout=PROMPT_STT_TIMEOUT_SECONDS.value
        )
    except grpc.aio.AioRpcError as error:
        log.warning(
            "could not time the words of a voice sample; it is kept whole",
            extra={"param": param, "status": error.code().name},
        )
        return []
    return [Word(w.start_seconds, w.end_seconds, w.text) for segment in reply.segments for w in segment.words]


@dataclass(frozen=True)
class Assembled:
    prompt: synth_pb2.AudioPrompt
    # Every clip was kept whole or cut between words: not a stand-in for want of word timings.
    exact: bool


async def assemble(
    transcode: grpc.aio.Channel,
    clips: list[Clip],
    max_seconds: float,
    gap_seconds: float,
    stt: grpc.aio.Channel | None = None,
) -> Assembled:
    """One 44.1 kHz mono WAV of the clips, each cut between words to its share, with its tagged
    transcript cut to match (see the module's docstring). Without `stt` a clip to cut is kept whole."""
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

    async def part(clip: Clip, seconds: float) -> tuple[bytes, str, bool]:
        """The clip's audio and transcript within `seconds`, and whether it is within them."""
        transcript = script.untagged(clip.transcript)
        if seconds >= clip.duration_seconds:
            return clip.wav, transcript, True
        start = await alone(clip, min(clip.duration_seconds, seconds + LISTEN_PAST_SHARE_SECONDS))
        words = await heard_words(stt, start, clip.param) if stt is not None else []
        if not words:
            return clip.wav, transcript, False
        cut = cut_between_words(words, transcript, seconds)
        if cut is None:
            raise invalid_parameter(
                "max_audio_prompt_seconds",
                f"{clip.param}: voice sample {clip.sample_id} has no whole word in the {seconds:.2f} s of "
                f"the prompt it gets (its first word ends at {words[0].end:.2f} s); allow a longer prompt "
                "with max_audio_prompt_seconds",
            )
        return await alone(clip, cut.seconds), cut.transcript, True

    if all(seconds >= clip.duration_seconds for clip, seconds in zip(clips, kept)):
        parts = [(clip.wav, script.untagged(clip.transcript), True) for clip in clips]  # the joining call alone will do
    else:
        parts = await in_order([part(clip, seconds) for clip, seconds in zip(clips, kept)])
    exact = all(within for _, _, within in parts)
    try:
        joined = await stub.ConcatenateAudio(
            transcode_pb2.ConcatenateAudioRequest(
                clips=[wav for wav, _, _ in parts],
                gap_seconds=gap_seconds,
                # The overall cap catches rounding: the prompt never exceeds the request's limit
                # (unless a clip had to be kept whole).
                max_duration_seconds=max_seconds if exact else 0.0,
            )
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            await in_order([alone(clip, 0.0) for clip in clips])  # raises for the speaker whose sample is at fault
        raise
    transcript = script.prompt_transcript({clip.speaker: said for clip, (_, said, _) in zip(clips, parts)})
    return Assembled(synth_pb2.AudioPrompt(wav=joined.wav, transcript=transcript), exact)


def _said_of(clip: Clip, error: grpc.aio.AioRpcError) -> ApiError:
    refusal = ApiError.from_rpc_error(error)
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return refusal  # the transcode service is down or failed: not the sample's fault
    refusal.message = f"{clip.param}: voice sample {clip.sample_id}: {refusal.message}"
    refusal.param = clip.param
    return refusal
