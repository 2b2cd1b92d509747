"""What reaches Dia: sanitized text, and prompt WAVs checked before any model work."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ApiError
from services.synth import audio
from runtime.text import sanitize
from tests.synth.helpers import noise_wav, wav_layout, wav_samples


def test_sanitize_keeps_speaker_tags_and_cues_but_no_other_special_tokens():
    assert sanitize("[S1] Hi!\n[S2]\t(laughs)  Hello.") == "[S1] Hi! [S2] (laughs) Hello."
    # Bytes 0-2 are the ids of <pad>, [S1] and [S2] in Dia's byte tokenizer.
    assert sanitize("[S1] a\x00b\x01c\x02d<pad>e\u200bf") == "[S1] abcdef"
    assert sanitize(" \x00 <pad> \n") == ""


def test_prompt_wav_is_read_as_floats_in_range():
    samples = audio.read_prompt(noise_wav(0.5), max_seconds=1.0)
    assert samples.dtype == np.float32 and samples.size == 22050
    assert np.abs(samples).max() <= 1.0


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not a wav file at all", "AUDIO_DECODE_FAILED"),
        (b"", "AUDIO_DECODE_FAILED"),
        (noise_wav(0.5, rate=16000), "AUDIO_DECODE_FAILED"),
        (noise_wav(0.5, channels=2), "AUDIO_DECODE_FAILED"),
        (noise_wav(0.0), "AUDIO_DECODE_FAILED"),
        (noise_wav(1.01), "AUDIO_TOO_LONG"),
    ],
    ids=["garbage", "empty", "16-khz", "stereo", "no-samples", "over-limit"],
)
def test_bad_prompts_are_refused_with_the_prompt_named(data, reason):
    with pytest.raises(ApiError) as caught:
        audio.read_prompt(data, max_seconds=1.0)
    assert (caught.value.reason, caught.value.param) == (reason, "audio_prompt.wav")


def test_a_prompt_exactly_at_the_limit_is_accepted():
    assert audio.read_prompt(noise_wav(1.0), max_seconds=1.0).size == 44100


def test_output_wav_is_44k_mono_16_bit_and_clips_instead_of_wrapping():
    wav = audio.to_wav(np.array([0.0, 0.5, -0.5, 1.7, -3.0], dtype=np.float32))
    assert wav_layout(wav) == (44100, 1, 16)
    assert wav_samples(wav).tolist() == [0, 16384, -16384, 32767, -32767]
