"""Settings of the transcode service."""

from __future__ import annotations

from runtime.config import at_least, positive, setting

MAX_INPUT_BYTES = setting(
    "TRANSCODE_MAX_INPUT_BYTES",
    50 * 1024 * 1024,
    "largest encoded audio input (each clip of a concatenation), in bytes",
    positive(int),
)
MAX_DURATION_SECONDS = setting(
    "TRANSCODE_MAX_DURATION_SECONDS",
    600.0,
    "longest audio an input may decode to (and longest joined audio), in seconds",
    positive(float),
)
DECODE_TIMEOUT_SECONDS = setting(
    "TRANSCODE_DECODE_TIMEOUT_SECONDS",
    60.0,
    "wall-clock time one input may take to decode before it is refused",
    positive(float),
)
WORKERS = setting(
    "TRANSCODE_WORKERS",
    2,
    "threads that decode and encode audio off the event loop",
    at_least(1),
)
