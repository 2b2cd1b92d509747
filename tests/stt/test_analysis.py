"""The analysis of generated speech on real speech: espeak-ng's two voices (tests/fixtures/README.md).

The recognizer and the speaker encoder run in this process, as the STT service runs them;
test_stt_analysis.py drives the same through the service's RPCs.
"""

from __future__ import annotations

import re

import pytest

from services.stt import analysis, config, sample_checks
from services.stt.recognizer import Recognizer, decoded
from tests.audio import wav_file
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
# What dialogue_two_voices.wav says: voice one, voice two, voice one (the cue is not spoken).
SCRIPT = (
    "[S1] Good morning, how are you today? [S2] (laughs) I am fine, thank you for asking. "
    "[S1] The weather is lovely this morning."
)
SECOND_TURN = "I am fine, thank you for asking."
# Words of each turn the tiny Whisper model hears as written.
DISTINCT_WORDS = ["morning", "today", "fine", "thank", "asking", "lovely"]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer(config.STT_MODEL.value, "cpu", "int8", 1)


@pytest.fixture(scope="module")
def voices() -> analysis.Voices:
    return analysis.Voices()


def analyzed(recognizer, voices, name: str, samples: dict[str, str] | None = None) -> analysis.Analysis:
    speaker_samples = {speaker: fixture(sample) for speaker, sample in (samples or {}).items()}
    return analysis.analyze(recognizer, voices, fixture(name), SCRIPT, "en", speaker_samples)


def plain(word: str) -> str:
    return re.sub(r"[^a-z']", "", word.lower())


def test_every_script_word_is_listed_in_order_without_the_cues(recognizer, voices):
    result = analyzed(recognizer, voices, "dialogue_two_voices.wav")
    assert [word.text for word in result.words] == re.sub(r"\[S\d\]|\(laughs\)", " ", SCRIPT).split()
    assert [turn.speaker for turn in result.turns] == ["S1", "S2", "S1"]
    assert result.turns[1].text == SECOND_TURN


def test_known_words_are_timed_in_order_inside_the_audio(recognizer, voices):
    result = analyzed(recognizer, voices, "dialogue_two_voices.wav")
    duration = len(decoded(fixture("dialogue_two_voices.wav"))) / 16_000
    known = [word for word in result.words if plain(word.text) in DISTINCT_WORDS]
    assert {plain(word.text) for word in known} == set(DISTINCT_WORDS)
    assert all(word.heard for word in known), result.transcript.text
    starts = [word.start_seconds for word in known]
    assert starts == sorted(starts)
    for word in known:
        assert 0 <= word.start_seconds <= word.end_seconds <= duration + 0.05
    # The turns follow one another, each inside the audio, as the clip was made (0.3 s gaps).
    ends = [0.0] + [turn.end_seconds for turn in result.turns]
    for previous_end, turn in zip(ends, result.turns):
        assert previous_end <= turn.start_seconds < turn.end_seconds <= duration + 0.05


def test_a_skipped_sentence_is_not_heard_and_raises_the_error_rate(recognizer, voices):
    whole = analyzed(recognizer, voices, "dialogue_two_voices.wav")
    skipping = analyzed(recognizer, voices, "dialogue_skips_a_sentence.wav")
    assert skipping.word_error_rate > whole.word_error_rate + 0.2
    assert not skipping.turns[1].heard
    assert not any(word.heard for word in skipping.turns[1].words)
    assert all(word.start_seconds == word.end_seconds == 0 for word in skipping.turns[1].words)
    # The sentences that are there are still heard.
    heard = {plain(word.text) for word in skipping.words if word.heard}
    assert {"morning", "today", "lovely"} <= heard


def test_the_error_rate_leaves_cues_out():
    # A transcript that hears exactly the script's words has no error, though the script has a cue.
    turns = analysis.script_turns("[S1] (sighs) Hello there. [S2] (laughs) Hi!")
    words = [
        analysis.HeardWord(analysis.normalized(word.text), index, index + 0.5)
        for index, word in enumerate(word for turn in turns for word in turn.words)
    ]
    assert analysis.word_error_rate(turns, words) == 0
    assert analysis.word_error_rate(turns, words[:2]) == pytest.approx(1 / 3)


def test_the_same_voice_scores_higher_than_another(recognizer, voices):
    matching = analyzed(
        recognizer, voices, "dialogue_two_voices.wav", {"S1": "sample_voice_one.wav", "S2": "sample_voice_two.wav"}
    )
    swapped = analyzed(
        recognizer, voices, "dialogue_two_voices.wav", {"S1": "sample_voice_two.wav", "S2": "sample_voice_one.wav"}
    )
    for speaker in ("S1", "S2"):
        assert matching.similarities[speaker] > swapped.similarities[speaker] + 0.1, (matching, swapped)
        assert -1 <= swapped.similarities[speaker] < matching.similarities[speaker] <= 1


def test_a_speaker_without_heard_turns_gets_no_similarity(recognizer, voices):
    result = analyzed(
        recognizer, voices, "dialogue_skips_a_sentence.wav", {"S1": "sample_voice_one.wav", "S2": "sample_voice_two.wav"}
    )
    assert set(result.similarities) == {"S1"}


THRESHOLDS = sample_checks.Thresholds(
    min_seconds=3, max_seconds=30, max_silence_ratio=0.5, max_clipped_ratio=0.001, same_speaker_similarity=0.7
)


def codes(check: sample_checks.SampleCheck) -> set[str]:
    return {code for code, _ in check.warnings}


def transcoded(name: str) -> bytes:
    """A fixture as the transcode service gives it to the checks: 16-bit mono WAV."""
    return fixture(name)  # the analysis fixtures are 16-bit mono WAV already


def test_a_one_voice_sample_gets_no_warning(voices):
    check = sample_checks.check_sample(voices, transcoded("sample_voice_one.wav"), THRESHOLDS)
    assert check.warnings == []
    assert 5 < check.duration_seconds < 6
    assert 0 < check.silence_ratio < 0.5
    assert check.clipped_ratio == 0


def test_a_two_voice_sample_is_warned(voices):
    check = sample_checks.check_sample(voices, transcoded("sample_two_voices.wav"), THRESHOLDS)
    assert codes(check) == {"several_speakers"}
    assert check.least_window_similarity < THRESHOLDS.same_speaker_similarity


def test_a_clipped_sample_is_warned(voices):
    samples = sample_checks.pcm16(transcoded("sample_voice_one.wav")).astype(float) * 8
    clipped = wav_file(samples.clip(-32768, 32767), 16_000)
    check = sample_checks.check_sample(voices, clipped, THRESHOLDS)
    assert "clipping" in codes(check)
    assert check.clipped_ratio > THRESHOLDS.max_clipped_ratio


def test_length_and_silence_are_warned_at_their_thresholds(voices):
    wav = transcoded("sample_voice_one.wav")
    check = sample_checks.check_sample(voices, wav, THRESHOLDS)
    at_the_edges = sample_checks.Thresholds(
        min_seconds=check.duration_seconds + 0.01,
        max_seconds=check.duration_seconds - 0.01,
        max_silence_ratio=check.silence_ratio - 0.01,
        max_clipped_ratio=1,
        same_speaker_similarity=-1,
    )
    assert codes(sample_checks.check_sample(voices, wav, at_the_edges)) == {"too_short", "too_long", "mostly_silence"}
    just_inside = sample_checks.Thresholds(
        min_seconds=check.duration_seconds - 0.01,
        max_seconds=check.duration_seconds + 0.01,
        max_silence_ratio=check.silence_ratio,
        max_clipped_ratio=1,
        same_speaker_similarity=-1,
    )
    assert sample_checks.check_sample(voices, wav, just_inside).warnings == []
