"""What a request to the engine is, what it gets back (or fails with), and the settings its row samples with.

Plain data, no torch at run time: the scheduler, which knows no torch, reads requests too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Hashable

import grpc

from runtime.errors import ApiError
from services.synth.params import GenerationParams, frames_of

if TYPE_CHECKING:
    import numpy as np
    import torch


# The lane every request runs in unless the scheduler gives it one of its own (a batch of one).
SHARED_LANE = 0


@dataclass(frozen=True)
class SynthesisInput:
    text: str  # prompt transcript (if any) followed by the script, sanitized
    prompt: np.ndarray | None  # 44.1 kHz float32 samples of the voice-cloning prompt
    params: GenerationParams
    seed: int  # the seed actually used (chosen at random when the caller gave none)
    # Streaming hook (see streaming.py), called in the generation thread after every step with this
    # row's codes so far (frames × codebooks, delayed, prompt included) and the frame where its new
    # audio starts. None: not streamed.
    on_frames: Callable[[torch.Tensor, int], None] | None = field(default=None, compare=False)
    # Instead of `prompt`: its codes already (a cached voices' prompt, a continuation's codes), frames × codebooks.
    prompt_codes: torch.Tensor | None = field(default=None, compare=False)
    # What the codes of `prompt` are cached by, with their transcript (a voices' prompt, voices.py);
    # None: by the prompt's content.
    prompt_key: Hashable | None = None
    prompt_transcript: str = ""

    @property
    def prompt_frames(self) -> int:
        """The frames of codes the prompt takes."""
        if self.prompt_codes is not None:
            return int(self.prompt_codes.shape[0])
        return 0 if self.prompt is None else frames_of(len(self.prompt))


@dataclass(frozen=True)
class Generated:
    # float32, 44.1 kHz, the new speech only. None for a streamed request: its audio went out in
    # chunks as it was generated (streaming.py), so it is not decoded again whole.
    samples: np.ndarray | None
    generated_frames: int  # frames generated, end marker and delay tail included
    codes: torch.Tensor  # (frames, codebooks): the audio codes the samples decode from


@dataclass(frozen=True)
class RowSettings:
    """How one row samples (the sampler reads them) and how long it may run."""

    cfg_scale: float
    temperature: float  # 0 = greedy
    top_p: float
    top_k: int  # cfg_filter_top_k
    max_new_tokens: int  # frames to generate at most, end marker and delay tail included
    seed: int

    @classmethod
    def of(cls, request: SynthesisInput) -> RowSettings:
        params = request.params
        return cls(
            params.cfg_scale, params.temperature, params.top_p, params.cfg_filter_top_k, params.max_new_tokens,
            request.seed,
        )  # fmt: skip


def generation_failed(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, "GENERATION_FAILED", message)


def no_token_left() -> ApiError:
    return generation_failed(
        "the model left no audio token to choose for this request (its scores were all ruled out or not numbers)"
    )
