"""Settings of the library service (environment variables, see README)."""

from __future__ import annotations

from runtime.config import positive, setting


MAX_UPLOAD_BYTES = setting(
    "LIBRARY_MAX_UPLOAD_BYTES",
    20 * 1024 * 1024,
    "largest voice-sample upload in bytes; larger ones fail with request_too_large (HTTP 413)",
    positive(int),
)
MAX_CONCURRENT_UPLOADS = setting(
    "LIBRARY_MAX_CONCURRENT_UPLOADS",
    4,
    "voice-sample uploads one library process works on at once (each holds a few copies of its audio "
    "in memory); one more is refused at once with 429 uploads_busy and a Retry-After",
    positive(int),
)
MAX_SAMPLE_SECONDS = setting(
    "LIBRARY_MAX_SAMPLE_SECONDS",
    120.0,
    "longest voice sample in seconds once decoded; longer ones fail with audio_too_long",
    positive(float),
)
MAX_TRANSCRIPT_CHARS = setting(
    "LIBRARY_MAX_TRANSCRIPT_CHARS",
    2000,
    "longest voice-sample transcript in characters (a longer speech-recognition result is cut)",
    positive(int),
)
MAX_SPEAKER_NAME_CHARS = setting(
    "LIBRARY_MAX_SPEAKER_NAME_CHARS", 100, "longest voice-sample speaker_name in characters", positive(int)
)
MAX_COLLECTION_CHARS = setting(
    "LIBRARY_MAX_COLLECTION_CHARS", 100, "longest voice-sample collection name in characters", positive(int)
)
STT_TIMEOUT_SECONDS = setting(
    "LIBRARY_STT_TIMEOUT_SECONDS",
    30.0,
    "how long an upload waits for speech recognition (its transcript and its check) before it is stored without them",
    positive(float),
)
READINESS_INTERVAL_SECONDS = setting(
    "LIBRARY_READINESS_INTERVAL_SECONDS",
    5.0,
    "how often the library checks that PostgreSQL is reachable (health is NOT_SERVING while not)",
    positive(float),
)
DATABASE_RETRY_SECONDS = setting(
    "LIBRARY_DATABASE_RETRY_SECONDS",
    2.0,
    "at start-up, pause between attempts to reach PostgreSQL (health stays NOT_SERVING meanwhile)",
    positive(float),
)
