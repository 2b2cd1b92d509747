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
    DiaClassifierFreeGuidanceLogitsProcessor,
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
        # Requests (by batch index) that were left nothing to sample from: their output is void.
        self.failed: set[int] = set()
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
        # scores: one row per (request, codebook), requests in batch order.
        if self.greedy:
            probabilities = torch.softmax(scores, dim=-1)  # only to find rows with nothing to choose
        else:
            probabilities = torch.softmax(self.warpers(input_ids, scores), dim=-1)
        per_request = probabilities.view(len(self.generators), self.num_channels, -1)
        # A request left no token to choose on some codebook (every score -inf, or NaN) fails
        # alone: its rows get a harmless token from here on, and the others carry on. Drawing
        # from such a row would fail the whole batch (on CUDA, a device-side assert that breaks
        # the process's CUDA context).
        usable = (torch.isfinite(per_request) & (per_request >= 0)).all(dim=-1) & (per_request.sum(dim=-1) > 0)
        broken = ~usable.all(dim=-1)
        if broken.any():
            self.failed.update(int(index) for index in broken.nonzero().flatten())
            stand_in = torch.zeros_like(per_request[0])
            stand_in[:, 0] = 1.0
            per_request = torch.where(broken[:, None, None], stand_in, per_request)
        if self.greedy:
            if not broken.any():
                return scores
            stand_in_scores = torch.full_like(scores, -float("inf")).view_as(per_request)
            stand_in_scores[:, :, 0] = 0.0
            return torch.where(broken[:, None, None], stand_in_scores, scores.view_as(per_request)).view_as(scores)
        drawn = torch.stack(
            [
                torch.multinomial(rows, num_samples=1, generator=generator)
                for rows, generator in zip(per_request, self.generators)
            ]
        ).view(-1, 1)
        only_drawn = torch.full_like(scores, -float("inf"))
        return only_drawn.scatter_(1, drawn, 0.0)


class GuidanceAmongAllowed(DiaClassifierFreeGuidanceLogitsProcessor):
    """Dia's classifier-free guidance, its top-k taken among the tokens Dia's end rules allow.

    transformers (as Dia's own code) keeps the guidance_top_k best guided
    tokens first and applies the end rules after (only channel 0 may emit the
    end marker; no channel emits the tokens after it). With a small
    cfg_filter_top_k that can leave a channel no token at all, and sampling
    fails on it (cfg_filter_top_k=1 always did, on the tiny model: found by
    fuzzing). Ruling those tokens out first keeps k allowed ones; when the k
    best were allowed anyway, which is the usual case, nothing changes.
    """

    def __init__(self, guidance_scale: float, guidance_top_k: int, num_channels: int, eos_token_id: int) -> None:
        super().__init__(guidance_scale, guidance_top_k)
        self.num_channels = num_channels
        self.eos_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        cond, uncond = scores.split(scores.shape[0] // 2, dim=0)
        guided = cond + (cond - uncond) * self.guidance_scale
        # Rows are (request, channel); what DiaEOSChannelFilterLogitsProcessor rules out next.
        ruled_out = torch.zeros((self.num_channels, guided.shape[-1]), dtype=torch.bool, device=guided.device)
        ruled_out[1:, self.eos_id :] = True
        ruled_out[0, self.eos_id + 1 :] = True
        allowed = guided.view(-1, self.num_channels, guided.shape[-1]).masked_fill(ruled_out, -float("inf"))
        _, kept = torch.topk(allowed.view_as(guided), k=self.guidance_top_k, dim=-1)
        dropped = torch.ones_like(guided, dtype=torch.bool).scatter(dim=-1, index=kept, value=False)
        return cond.masked_fill(dropped, -float("inf"))  # as Dia's: the conditioned logits of the kept tokens


class StopWhen(StoppingCriteria):
    """Ends a generation early when `should_stop()` says so (every caller gone, or shutdown).

    Called once per decoder step, it also shows the codes so far to `on_step`
    (streamed synthesis: see streaming.py).
    """

    def __init__(
        self, should_stop: Callable[[], bool], on_step: Callable[[torch.LongTensor], None] | None = None
    ) -> None:
        self.should_stop = should_stop
        self.on_step = on_step

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.on_step is not None:
            self.on_step(input_ids)
        stop = self.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
