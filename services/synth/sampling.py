"""Token sampling for Dia, one random generator per request.

Why not transformers' own sampling (``do_sample=True``):

* it clamps ``temperature`` below 1.0 up to 1.0 for Dia, while the public API
  promises 0.1–2.0 and the predictor API means greedy by 0;
* it draws every row of a batch from torch's one global generator, so a
  request's tokens would depend on the requests it was batched with, and the
  seed a response reports could not repeat it.

So ``generate`` runs greedy (``do_sample=False``) and :class:`PerRowSampler`,
the last logits processor, does the sampling itself: temperature, top-k and
top-p with transformers' own warpers, then one multinomial draw per request
from that request's ``torch.Generator``. It returns scores in which only the
drawn token is finite, so the greedy step picks exactly that token.
Temperature 0 leaves the scores alone: plain greedy decoding.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class PerRowSampler(LogitsProcessor):
    def __init__(
        self,
        generators: list[torch.Generator],
        num_channels: int,
        temperature: float,
        top_k: int,
        top_p: float,
    ) -> None:
        self.generators = generators
        self.num_channels = num_channels
        self.greedy = temperature == 0
        warpers = LogitsProcessorList()
        if not self.greedy:
            warpers.append(TemperatureLogitsWarper(temperature))
            # Dia's guidance already keeps only cfg_filter_top_k tokens; this
            # matters when cfg_scale is 1, which turns guidance off.
            warpers.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
        self.warpers = warpers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.greedy:
            return scores
        # scores: one row per (request, codebook), requests in batch order.
        probabilities = torch.softmax(self.warpers(input_ids, scores), dim=-1)
        per_request = probabilities.view(len(self.generators), self.num_channels, -1)
        drawn = torch.stack(
            [
                torch.multinomial(rows, num_samples=1, generator=generator)
                for rows, generator in zip(per_request, self.generators)
            ]
        ).view(-1, 1)
        only_drawn = torch.full_like(scores, -float("inf"))
        return only_drawn.scatter_(1, drawn, 0.0)


class StopWhen(StoppingCriteria):
    """Ends a generation early when `should_stop()` says so (every caller gone, or shutdown)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = self.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
