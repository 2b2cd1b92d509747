"""Generation parameters: defaults, range checks, and which requests may share a batch.

Defaults are the public API's (../shared/spec/voice-generations-api.txt).
Ranges are the union of what the public API and the hosted-predictor API
accept (temperature 0 is the predictor's greedy decoding). Out of range →
INVALID_ARGUMENT with reason INVALID_PARAMETER naming the field.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from runtime.errors import invalid_parameter

# Dia's delay pattern is [0, 8, 9, ..., 15]: after the end marker on the first
# codebook the other codebooks still need 15 frames. So max_new_tokens counts
# 15 tail frames and 1 end-marker frame that carry no audio of their own.
DELAY_TAIL_FRAMES = 15
FRAMES_WITHOUT_AUDIO = DELAY_TAIL_FRAMES + 1

# Random seeds stay below 2**32 so that they survive a round trip through
# JSON numbers (JavaScript loses precision above 2**53).
RANDOM_SEED_LIMIT = 2**32


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    default: float


RANGES = {
    "cfg_scale": Range(1.0, 5.0, 3.0),
    "temperature": Range(0.0, 2.0, 1.8),
    "top_p": Range(0.1, 1.0, 0.95),
    "cfg_filter_top_k": Range(1, 100, 45),
    "speed_factor": Range(0.5, 2.0, 1.0),
}
DEFAULT_MAX_NEW_TOKENS = 3072


@dataclass(frozen=True)
class GenerationParams:
    cfg_scale: float
    temperature: float  # 0 = greedy
    top_p: float
    cfg_filter_top_k: int
    max_new_tokens: int  # delay tail included
    speed_factor: float  # applied after generation
    seed: int | None  # None: the caller asked for a random seed

    @property
    def seeded(self) -> bool:
        return self.seed is not None

    def batch_key(self) -> tuple:
        """Requests whose keys are equal can be generated in one `generate` call.

        One call shares its guidance, sampling and length settings across
        rows; speed_factor and the seed are per request (each row samples with
        its own generator), so they are not part of the key.
        """
        return (self.cfg_scale, self.temperature, self.top_p, self.cfg_filter_top_k, self.max_new_tokens)


def _checked(name: str, value: float | None) -> float:
    bounds = RANGES[name]
    if value is None:
        return bounds.default
    if not bounds.low <= value <= bounds.high:  # NaN fails too
        raise invalid_parameter(name, f"{name} must be between {bounds.low:g} and {bounds.high:g}, got {value:g}")
    return value


def _max_new_tokens(value: int | None, limit: int) -> int:
    if value is None:
        return min(DEFAULT_MAX_NEW_TOKENS, limit)
    if value <= FRAMES_WITHOUT_AUDIO:
        raise invalid_parameter(
            "max_new_tokens",
            f"max_new_tokens must be more than {FRAMES_WITHOUT_AUDIO}: the last {FRAMES_WITHOUT_AUDIO} "
            f"frames are Dia's end marker and delay tail, so {value} leaves no audio",
        )
    if value > limit:
        raise invalid_parameter("max_new_tokens", f"max_new_tokens must be at most {limit}, got {value}")
    return value


def _seed(value: int | None) -> int | None:
    if value is None or value == -1:
        return None
    if value < 0:
        raise invalid_parameter("seed", f"seed must be 0 or more (or -1 for a random seed), got {value}")
    return value


def from_proto(settings, max_new_tokens_limit: int) -> GenerationParams:
    """Validate a `GenerationSettings` message; unset fields take the defaults."""

    def field(name: str):
        return getattr(settings, name) if settings.HasField(name) else None

    top_k = field("cfg_filter_top_k")
    return GenerationParams(
        cfg_scale=_checked("cfg_scale", field("cfg_scale")),
        temperature=_checked("temperature", field("temperature")),
        top_p=_checked("top_p", field("top_p")),
        cfg_filter_top_k=int(_checked("cfg_filter_top_k", top_k)),
        max_new_tokens=_max_new_tokens(field("max_new_tokens"), max_new_tokens_limit),
        speed_factor=_checked("speed_factor", field("speed_factor")),
        seed=_seed(field("seed")),
    )


def random_seed() -> int:
    return secrets.randbelow(RANDOM_SEED_LIMIT)
