"""Dia's sampling rules, the one place they are written: from a step's logits to each row's next frame.

What transformers' ``DiaForConditionalGeneration.generate`` does with its
logits processors, this does per row, each row with settings of its own
(tests/synth/test_synth_equivalence.py runs both):

* classifier-free guidance: each request is two rows of the model's batch,
  its text and an all-zero "unconditioned" text of the same length; the
  guided logits ``cond + scale * (cond - uncond)`` choose the top
  cfg_filter_top_k tokens, whose *conditioned* logits are kept (scale 1
  means no guidance, as in transformers: the top-k of ``cond`` alone);
* masking, Dia's end rules: codebook 0 may emit the end marker (1024),
  the others may not, and no codebook emits the ids after it (pad, bos);
  the end marker is codebook 0's only candidate when it is its best token,
  and no candidate otherwise. Where transformers takes its top-k first and
  masks after, this masks first and takes its top-k among what is allowed,
  so a small cfg_filter_top_k never leaves a codebook without a token
  (transformers' then has none: its greedy decoding emits token 0, its
  sampling fails). When none of the k best was masked, the two are the same;
* end of audio: codebook 0 ends at its end marker, or is made to end when
  ``max_new_tokens`` leaves only the delay tail (16 frames); codebook c emits
  its end marker ``delay[c]`` frames later and pad after it;
* drawing: temperature, then top-p (as transformers' TopPLogitsWarper), then
  one draw per row from the row's own ``torch.Generator``; temperature 0
  takes the best token. transformers' Dia would clamp a temperature below 1
  up to 1 and draw every row from torch's one global generator; neither
  suits a service that promises 0.1–2 and repeatable seeds.

A row whose scores are not numbers or leave a codebook nothing is reported
broken (it fails alone; the rows beside it are drawn as they would be).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.synth.engine.request import RowSettings

NEG_INF = -float("inf")


@dataclass
class SamplingMetadata:
    """The rows' settings as tensors (rows in batch order), built when the rows change."""

    scale: torch.Tensor  # guidance; 0 where cfg_scale is 1
    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    limit: torch.Tensor  # the position at which codebook 0 is made to end (max_new_tokens)
    positions: torch.Tensor  # the frame each row generates at this step (the runner advances it)
    most_k: int  # the largest top_k: how many candidates to keep
    sampled: list[int]  # rows with a temperature above 0
    most_sampled_k: int
    generators: list[torch.Generator]  # the sampled rows' own, in that order

    @classmethod
    def of(
        cls,
        settings: list[RowSettings],
        prefill_frames: list[int],
        positions: list[int],
        generators: list[torch.Generator | None],
        max_delay: int,
        device: torch.device,
    ) -> SamplingMetadata:
        def tensor(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        sampled = [index for index, row in enumerate(settings) if row.temperature > 0]
        return cls(
            # transformers' Dia turns guidance off at scale 1 (cond alone), where the
            # formula would still give 2·cond − uncond: scale 1 guides by 0.
            scale=tensor([0.0 if row.cfg_scale == 1 else row.cfg_scale for row in settings]),
            temperature=tensor([row.temperature for row in settings]),
            top_p=tensor([row.top_p for row in settings]),
            top_k=tensor([row.top_k for row in settings], torch.long),
            # The last frame codebook 0 may carry audio: the delay tail (max_delay frames) and the
            # end marker fill the rest of max_new_tokens.
            limit=tensor(
                [prefill + row.max_new_tokens - max_delay - 1 for prefill, row in zip(prefill_frames, settings)],
                torch.long,
            ),
            positions=tensor(positions, torch.long),
            most_k=max(row.top_k for row in settings),
            sampled=sampled,
            most_sampled_k=max([settings[index].top_k for index in sampled], default=0),
            generators=[generators[index] for index in sampled],
        )


@dataclass
class SamplerOutput:
    tokens: torch.Tensor  # (rows, C): each row's next frame (delayed codes)
    eos_at: torch.Tensor  # (rows,): where codebook 0 ended, -1 while it has not
    broken: torch.Tensor  # (rows,) bool: its scores left no token to choose


class Sampler:
    def __init__(self, channels: int, vocab: int, eos: int, pad: int, delay_pattern: list[int], device) -> None:
        self.channels, self.vocab, self.eos, self.pad = channels, vocab, eos, pad
        self.delays = torch.tensor(delay_pattern, device=device)
        self.device = device
        # What the end rules rule out: the end marker on codebooks 1.., the ids after it everywhere.
        ruled_out = torch.zeros((channels, vocab), dtype=torch.bool, device=device)
        ruled_out[1:, eos:] = True
        ruled_out[0, eos + 1 :] = True
        self.ruled_out = ruled_out

    def candidates(self, logits: torch.Tensor, rows: SamplingMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, ends) from (2, rows, C, V) logits (conditioned, unconditioned): the scores each row
        draws from, -inf for every token it may not take, and whether codebook 0 chose the end marker."""
        cond, uncond = logits[0], logits[1]
        guided = cond + (cond - uncond) * rows.scale[:, None, None]
        guided = guided.masked_fill(self.ruled_out, NEG_INF)
        # Top-k per row (k differs): the k best allowed guided tokens keep their conditioned logits.
        most = rows.most_k
        best = guided.topk(most, dim=-1).indices
        within = torch.arange(most, device=self.device)[None, None, :] < rows.top_k[:, None, None]
        keep = torch.zeros_like(guided, dtype=torch.bool).scatter_(-1, best, within.expand_as(best))
        # A k beyond the allowed tokens takes ruled-out ones into the top-k: they stay out.
        scores = cond.masked_fill(~keep | self.ruled_out, NEG_INF)
        # The end marker on codebook 0: the only candidate when it is the best, else none.
        ends = scores[:, 0].argmax(dim=-1) == self.eos
        scores[:, 0, self.eos] = torch.where(ends, scores[:, 0, self.eos], NEG_INF)
        scores[:, 0, : self.eos] = scores[:, 0, : self.eos].masked_fill(ends[:, None], NEG_INF)
        return scores, ends

    def __call__(self, logits: torch.Tensor, rows: SamplingMetadata, eos_at: torch.Tensor) -> SamplerOutput:
        """The next frame of every row from (2, rows, C, V) float logits; `eos_at` is where each row's
        codebook 0 ended so far (-1: not yet)."""
        scores, ends = self.candidates(logits, rows)
        broken = torch.isnan(scores).any(-1).any(-1) | ~torch.isfinite(scores).any(-1).all(-1)
        scores = scores.masked_fill(broken[:, None, None], 0.0)  # anything drawable: its tokens are dropped
        tokens = scores.argmax(dim=-1)
        if rows.sampled:
            tokens = self._draw(scores, tokens, rows)

        # Codebook 0 ends at its end marker or when max_new_tokens makes it; codebook c delay[c] later.
        positions = rows.positions
        starting = (eos_at < 0) & (ends | (positions == rows.limit))
        eos_at = torch.where(starting, positions, eos_at)
        since = (positions - eos_at)[:, None]
        ended = (eos_at >= 0)[:, None]
        tokens = torch.where(ended & (since == self.delays[None, :]), self.eos, tokens)
        tokens = torch.where(ended & (since > self.delays[None, :]), self.pad, tokens)
        return SamplerOutput(tokens, eos_at, broken)

    def _draw(self, scores: torch.Tensor, greedy: torch.Tensor, rows: SamplingMetadata) -> torch.Tensor:
        """Draw the sampled rows' tokens among their top-k candidates (the rest are -inf anyway)."""
        index = torch.tensor(rows.sampled, device=self.device)
        values, candidates = scores[index].topk(rows.most_sampled_k, dim=-1)  # best first
        warped = values / rows.temperature[index, None, None]
        # Top-p as transformers' TopPLogitsWarper: drop the least likely tokens that together
        # hold at most 1 - top_p of the mass, keeping the best one whatever.
        from_least = warped.softmax(dim=-1).flip(-1).cumsum(dim=-1)
        drop = (from_least <= (1 - rows.top_p[index, None, None])).flip(-1)
        drop[..., 0] = False
        probabilities = warped.masked_fill(drop, NEG_INF).softmax(dim=-1)
        tokens = greedy.clone()
        for place, (row, generator) in enumerate(zip(rows.sampled, rows.generators)):
            drawn = torch.multinomial(probabilities[place], 1, generator=generator)
            tokens[row] = candidates[place].gather(-1, drawn)[:, 0]
        return tokens
