"""The voice-cloning prompt as the gateway asks for it: which samples, as whose account, how long.

The provider makes the prompt (services/synth/voices.py): it fetches each
cloned speaker's sample from the library as the caller's account, cuts it
between words to its share of ``max_audio_prompt_seconds`` by the word
timings the library keeps with it, joins S1 and S2 with
GATEWAY_PROMPT_GAP_SECONDS of silence between them, encodes it with Dia's
codec, and keeps the codes in its one prompt cache, by the samples' identity
and version and the cut. The gateway only names the voices: the samples it
checked at admission (one small call per speaker, library.py, which refuses
a missing or another account's sample with a clear 400), by id and version.

What the gateway must know before the provider is called (to fit
max_new_tokens and split a long script, and to say so to the caller) it
bounds from the samples' descriptions: the prompt is at most the samples'
lengths with the gap, and at most ``max_audio_prompt_seconds``; its
transcript is at most the samples' whole transcripts. Cut between words, a
prompt is shorter than that bound, never longer.
"""

from __future__ import annotations

from services.gateway.generation import script
from services.gateway.generation.library import Sample
from voice.synth.v1 import synth_pb2


def voice_prompt(account_id: int, samples: list[Sample], max_seconds: float, gap_seconds: float) -> synth_pb2.VoicePrompt:
    """The voices of a generation as the provider fetches them: as the caller's account, each sample at
    the version the library described at admission."""
    return synth_pb2.VoicePrompt(
        account_id=account_id,
        samples=[
            synth_pb2.VoiceSampleRef(speaker=sample.speaker, sample_id=sample.sample_id, version=sample.version)
            for sample in samples
        ],
        max_seconds=max_seconds,
        gap_seconds=gap_seconds,
    )


def longest_seconds(samples: list[Sample], max_seconds: float, gap_seconds: float) -> float:
    """The most seconds the samples' prompt can last: all of them with the gaps, within `max_seconds`."""
    whole = sum(sample.duration_seconds for sample in samples) + gap_seconds * (len(samples) - 1)
    return min(whole, max_seconds)


def longest_transcript(samples: list[Sample]) -> str:
    """The prompt's transcript at its longest: the samples' whole transcripts, tagged with their speakers."""
    return script.prompt_transcript({sample.speaker: sample.transcript for sample in samples})
