"""Generation parameters: defaults, range checks, and what fits Dia's decoder positions.

The values the engine accepts, and the defaults of unset fields, are
declared on GenerationSettings in synth.proto (the provider's own contract,
not any public API's: the gateway checks its faces' ranges before). Out of
range → INVALID_ARGUMENT with reason INVALID_PARAMETER naming the field.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

from runtime import fields
from runtime.errors import invalid_parameter
from services.synth.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from voice.synth.v1 import synth_pb2

# Dia's delay pattern is [0, 8, 9, ..., 15]: after the end marker on the first
# codebook the other codebooks still need 15 frames. So max_new_tokens counts
# 15 tail frames and 1 end-marker frame that carry no audio of their own.
DELAY_TAIL_FRAMES = 15
FRAMES_WITHOUT_AUDIO = DELAY_TAIL_FRAMES + 1

# Random seeds stay below 2**32 so that they survive a round trip through
# JSON numbers (JavaScript loses precision above 2**53).
RANDOM_SEED_LIMIT = 2**32


# Field → (lowest, highest, default), as synth.proto declares them.
RANGES = fields.bounds(synth_pb2.GenerationSettings.DESCRIPTOR)
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


def _checked(name: str, value: float | None) -> float:
    low, high, default = RANGES[name]
    if value is None:
        return default
    if not low <= value <= high:  # NaN fails too
        raise invalid_parameter(name, f"{name} must be between {low:g} and {high:g}, got {value:g}")
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


def frames_of(samples: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> int:
    """The frames of codes Dia's codec makes of a prompt of `samples` samples."""
    return -(-samples // samples_per_frame)


def room_for_new_frames(prompt_frames: int, positions: int) -> int:
    """The most frames a generation after `prompt_frames` prompt frames may have: Dia's decoder
    sees the prompt's frames, then the new ones, within its `positions` (3072 for Dia).

    The one statement of that rule: the service fits requests by it (fit_positions) and the
    runner refuses a row that breaks it (runner.DecodeBatch.check_fits).
    """
    return positions - prompt_frames


def fit_positions(
    generation: GenerationParams, prompt_frames: int, max_frames: int, lower_to_fit: bool
) -> GenerationParams:
    """Keep a generation within Dia's decoder positions (`max_frames`, 3072 for Dia).

    The decoder sees the prompt's frames, then the new ones: prompt frames +
    max_new_tokens must be at most max_frames. A max_new_tokens the caller
    chose and that does not fit fails with INVALID_PARAMETER naming it; one
    the caller did not choose (`lower_to_fit`) is lowered to what fits. A
    prompt that leaves no room for audio fails, naming max_audio_prompt_seconds.
    """
    room = room_for_new_frames(prompt_frames, max_frames)
    seconds = prompt_frames * SAMPLES_PER_FRAME / SAMPLE_RATE
    if room <= FRAMES_WITHOUT_AUDIO:
        raise invalid_parameter(
            "max_audio_prompt_seconds",
            f"the voice prompt is {seconds:.1f} s ({prompt_frames} frames) and Dia's decoder holds "
            f"{max_frames} frames in all, which leaves no room for new audio; use a shorter prompt "
            "(max_audio_prompt_seconds)",
        )
    if generation.max_new_tokens <= room:
        return generation
    if lower_to_fit:
        return dataclasses.replace(generation, max_new_tokens=room)
    if prompt_frames == 0:
        message = (
            f"max_new_tokens must be at most {max_frames}, the frames Dia's decoder holds; "
            f"got {generation.max_new_tokens}"
        )
    else:
        message = (
            f"max_new_tokens can be at most {room} with this {seconds:.1f} s voice prompt: Dia's decoder "
            f"holds {max_frames} frames, prompt ({prompt_frames}) and new ones together; got "
            f"{generation.max_new_tokens}. Ask for fewer, or shorten the prompt (max_audio_prompt_seconds)"
        )
    raise invalid_parameter("max_new_tokens", message)


def random_seed() -> int:
    return secrets.randbelow(RANDOM_SEED_LIMIT)
