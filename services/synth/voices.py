"""Voice prompts made from the caller's samples: fetched, cut between words, joined, encoded once.

The gateway names the voices (a :class:`VoicePrompt`: the account it
authenticated, each speaker's sample id and version, the prompt's length and
the gap); this provider makes the prompt Dia continues from:

* each sample comes from the library's PromptSampleService, as that account
  (another account's sample is not found), with its audio, transcript and the
  times of its words, which the library heard when it was stored: one call
  for all of a prompt's samples (BatchGetPromptSamples: one database query,
  their audio read at once), and no speech recognition here;
* the prompt is at most ``max_seconds`` long, gap included. When both
  speakers are cloned they share that time equally, so that both voices stay
  in the prompt however long either sample is; a clip shorter than its share
  leaves the rest to the other (:func:`shares`);
* a clip longer than its share is cut after the last word that ends within
  it, and its transcript with it: Dia speaks whatever words of the transcript
  the audio lacks at the start of its output. The stored transcript is
  aligned word by word with the words heard (:func:`said_before`) to keep the
  words said before the cut. When no whole word fits in the share the request
  is refused (``invalid_parameter`` naming max_audio_prompt_seconds). A sample
  whose words could not be timed (speech recognition was down when the library
  needed it) is kept whole with its whole transcript: that prompt is longer
  than asked, and is not cached, so that it is cut properly next time;
* the clips are joined S1 first with ``gap_seconds`` of silence between them,
  and encoded by the codec (engine/prompts.py), which keeps the codes with the
  cut transcript in its one cache, by :func:`cache_key`: the account, each
  sample's id and version (a changed sample has a new version), and the cut.
  The same voices then cost one look-up: no fetch, no codec.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import re
import wave
from dataclasses import dataclass

import grpc
import numpy as np
import prometheus_client

from runtime import clients
from runtime.errors import ApiError, invalid_argument, invalid_parameter
from runtime.text import sanitize
from services.synth.audio import SAMPLE_RATE
from voice.library.v1 import library_pb2, library_pb2_grpc
from voice.synth.v1 import synth_pb2

PROMPT_MAKING_SECONDS = prometheus_client.Histogram(
    "synth_voice_prompt_making_seconds",
    "Per voices' prompt not in the cache: seconds to fetch its samples from the library, cut and join them "
    "(the codec's encoding, which follows, not included).",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SAMPLE_FETCHES = prometheus_client.Counter(
    "synth_prompt_sample_fetches_total",
    "Voice samples fetched from the library to make a voice prompt (one per sample on a prompt-cache miss).",
)

# Below this share of words in common, a stored transcript is taken to say
# something else than the audio, and the recognizer's words are used instead.
MIN_AGREEMENT = 0.5
_TAG = re.compile(r"\[\s*[sS]\s*(\d+)\s*\]")  # as the gateway reads speaker tags ("[s1]", "[ S2 ]")
_SPACES = re.compile(r"\s+")


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


@dataclass(frozen=True)
class Clip:
    """A speaker's sample as fetched: its samples (float32, 44.1 kHz), transcript and timed words."""

    speaker: str  # "S1" or "S2"
    sample_id: int
    version: int
    samples: np.ndarray
    transcript: str
    words: list[Word] | None  # None: not timed

    @property
    def param(self) -> str:
        return f"speakers.{self.speaker}"

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE


@dataclass(frozen=True)
class Made:
    """A voice prompt's audio and its tagged transcript, and whether it is within its length."""

    samples: np.ndarray
    transcript: str
    exact: bool  # every clip kept whole or cut between words: not a stand-in for want of word timings
    key: tuple  # what its codes are cached by: its samples' identity as fetched, and the cut


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


def untagged(transcript: str) -> str:
    """A stored transcript's words, sanitized, without speaker tags, single-spaced."""
    return _SPACES.sub(" ", _TAG.sub(" ", sanitize(transcript))).strip()


def cache_key(account_id: int, samples: list[tuple[str, int, int]], max_seconds: float, gap_seconds: float) -> tuple:
    """What a voice prompt's codes are cached by: whose, which samples in which version as which
    speaker, and the cut (a changed sample has a new version, so its old prompt is never used)."""
    return ("voices", account_id, tuple(samples), max_seconds, gap_seconds)


def key_of(voices: synth_pb2.VoicePrompt) -> tuple:
    return cache_key(
        voices.account_id,
        [(ref.speaker, ref.sample_id, ref.version) for ref in voices.samples],
        voices.max_seconds,
        voices.gap_seconds,
    )


def assemble(clips: list[Clip], max_seconds: float, gap_seconds: float, account_id: int = 0) -> Made:
    """The clips, each cut between words to its share, joined S1 first with `gap_seconds` of silence
    between them, and their tagged transcript cut to match (see the module's docstring)."""
    kept = shares([clip.seconds for clip in clips], max_seconds, gap_seconds)
    parts: list[np.ndarray] = []
    said: list[str] = []
    exact = True
    for clip, seconds in zip(clips, kept):
        transcript = untagged(clip.transcript)
        if seconds >= clip.seconds:
            parts.append(clip.samples)
        elif not clip.words:  # not timed, or no word heard: nothing to cut between
            parts.append(clip.samples)
            exact = False
        else:
            cut = cut_between_words(clip.words, transcript, seconds)
            if cut is None:
                raise invalid_parameter(
                    "max_audio_prompt_seconds",
                    f"{clip.param}: voice sample {clip.sample_id} has no whole word in the {seconds:.2f} s of "
                    f"the prompt it gets (its first word ends at {clip.words[0].end:.2f} s); allow a longer prompt "
                    "with max_audio_prompt_seconds",
                )
            parts.append(clip.samples[: round(cut.seconds * SAMPLE_RATE)])
            transcript = cut.transcript
        said.append(f"[{clip.speaker}] {transcript}")
    gap = np.zeros(round(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    joined = [parts[0]]
    for part in parts[1:]:
        joined += [gap, part]
    samples = np.concatenate(joined).astype(np.float32)
    if exact:  # the cap catches rounding: the prompt never exceeds the request's limit
        samples = samples[: round(max_seconds * SAMPLE_RATE)]
    key = cache_key(account_id, [(c.speaker, c.sample_id, c.version) for c in clips], max_seconds, gap_seconds)
    return Made(samples, " ".join(said), exact, key)


def read_wav(data: bytes, clip_param: str, sample_id: int) -> np.ndarray:
    """A stored sample's 44.1 kHz mono 16-bit WAV as float32 samples; AUDIO_DECODE_FAILED naming its speaker."""
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            layout = (reader.getframerate(), reader.getnchannels(), reader.getsampwidth())
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as error:
        raise invalid_argument(
            "AUDIO_DECODE_FAILED", f"{clip_param}: voice sample {sample_id} is not readable audio: {error}", clip_param
        ) from None
    if layout != (SAMPLE_RATE, 1, 2) or len(frames) < 2:
        raise invalid_argument(
            "AUDIO_DECODE_FAILED",
            f"{clip_param}: voice sample {sample_id} is not {SAMPLE_RATE} Hz mono 16-bit audio",
            clip_param,
        )
    return np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


class Library:
    """The library's samples, as the account the gateway vouched for."""

    def __init__(self) -> None:
        self.channel: grpc.aio.Channel | None = None

    def start(self) -> None:
        self.channel = clients.service_channel("library")

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def clip(self, account_id: int, ref: synth_pb2.VoiceSampleRef) -> Clip:
        """One sample, in a call of its own (GetPromptSample): for a library without BatchGetPromptSamples."""
        assert self.channel is not None, "the library client has not started"
        try:
            reply = await library_pb2_grpc.PromptSampleServiceStub(self.channel).GetPromptSample(
                library_pb2.GetPromptSampleRequest(account_id=account_id, id=ref.sample_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # deleted since the gateway saw it, or not the account's
                raise not_in_library(ref) from None
            raise ApiError.from_rpc_error(error) from None
        return to_clip(ref, reply)

    async def clips(self, voices: synth_pb2.VoicePrompt) -> list[Clip]:
        """The samples of `voices`, in the order named, fetched in one call (BatchGetPromptSamples);
        the first speaker's error first."""
        assert self.channel is not None, "the library client has not started"
        refs = list(voices.samples)
        SAMPLE_FETCHES.inc(len(refs))
        try:
            reply = await library_pb2_grpc.PromptSampleServiceStub(self.channel).BatchGetPromptSamples(
                library_pb2.BatchGetPromptSamplesRequest(account_id=voices.account_id, ids=[r.sample_id for r in refs])
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise ApiError.from_rpc_error(error) from None
            # A library from before BatchGetPromptSamples: one call per sample, at once.
            fetched = await asyncio.gather(*(self.clip(voices.account_id, ref) for ref in refs), return_exceptions=True)
            for result in fetched:  # the first speaker's error first
                if isinstance(result, BaseException):
                    raise result
            return list(fetched)
        if len(reply.results) != len(refs):
            message = f"the library answered {len(reply.results)} of {len(refs)} voice samples"
            raise ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", message)
        clips = []
        for ref, result in zip(refs, reply.results):  # the first speaker's error first
            if not result.found:  # deleted since the gateway saw it, or not the account's
                raise not_in_library(ref)
            clips.append(to_clip(ref, result.sample))
        return clips

    async def made(self, voices: synth_pb2.VoicePrompt) -> Made:
        """The prompt of `voices`, from their samples fetched now (one call for them all)."""
        with PROMPT_MAKING_SECONDS.time():
            clips = await self.clips(voices)
            # Inline: slicing and joining a few seconds of samples takes a fraction of a millisecond.
            return assemble(clips, voices.max_seconds, voices.gap_seconds, voices.account_id)


def not_in_library(ref: synth_pb2.VoiceSampleRef) -> ApiError:
    param = f"speakers.{ref.speaker}"
    return invalid_argument(
        "INVALID_VOICE_SAMPLE", f"{param}: there is no voice sample {ref.sample_id} in your library", param
    )


def to_clip(ref: synth_pb2.VoiceSampleRef, reply: library_pb2.GetPromptSampleResponse) -> Clip:
    """A sample as the library answered it, its audio decoded (AUDIO_DECODE_FAILED naming its speaker)."""
    param = f"speakers.{ref.speaker}"
    words = [Word(w.start_seconds, w.end_seconds, w.text) for w in reply.words] if reply.words_timed else None
    return Clip(
        ref.speaker, ref.sample_id, reply.update_time.ToNanoseconds(), read_wav(reply.wav, param, ref.sample_id),
        reply.transcript, words,
    )  # fmt: skip
