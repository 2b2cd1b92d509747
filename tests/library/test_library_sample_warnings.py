"""Voice samples checked at upload (the STT service's CheckSample): warnings returned and kept with
the sample, which is stored all the same. On espeak-ng's voices (tests/fixtures/README.md)."""

from __future__ import annotations

import io
import wave

import numpy as np

from tests.audio import wav_file
from tests.library.helpers import FIXTURES, as_account, upload
from voice.library.v1 import library_pb2


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def pcm16(wav: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav)) as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")


def codes(sample: library_pb2.VoiceSample) -> list[str]:
    return [warning.code for warning in sample.warnings]


async def test_a_one_voice_sample_gets_no_warning(library, account):
    sample = await upload(library, account, fixture("sample_voice_one.wav"), transcript="typed")
    assert codes(sample) == []


async def test_a_two_voice_sample_is_warned_and_stored_and_the_warning_kept(library, account):
    sample = await upload(library, account, fixture("sample_two_voices.wav"))
    assert codes(sample) == ["several_speakers"]
    assert "one speaker" in sample.warnings[0].message
    assert sample.transcript_source == "stt"  # recognized beside the check
    stored = await library.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=sample.id), metadata=as_account(account))
    assert list(stored.voice_sample.warnings) == list(sample.warnings)


async def test_a_clipped_short_sample_is_warned_of_both(library, account):
    loud = pcm16(fixture("sample_voice_one.wav"))[: 16_000 * 2].astype(float) * 8
    sample = await upload(library, account, wav_file(np.clip(loud, -32768, 32767), 16_000), transcript="typed")
    assert sorted(codes(sample)) == ["clipping", "too_short"]
