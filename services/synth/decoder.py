"""Dia's decode loop with rows that join and leave between steps (continuous batching).

One :class:`DecodeBatch` holds the requests being generated together. Each
call of :meth:`DecodeBatch.step` advances every row by one frame; requests
passed to it join at that step (their text is encoded once and their
prompt prefilled), and rows that emitted their last frame leave it. Rows
differ in everything: text and prompt lengths, cfg_scale, temperature (0 =
greedy), top_p, cfg_filter_top_k, max_new_tokens, seed.

What transformers' ``DiaForConditionalGeneration.generate`` does for a
batch of one, this does per row (tests check the codes are the same):

* classifier-free guidance: each request is two rows of the model's batch,
  its text and an all-zero "unconditioned" text of the same length; the
  guided logits ``cond + scale * (cond - uncond)`` choose the top
  cfg_filter_top_k tokens, whose *conditioned* logits are kept (scale 1
  means no guidance, as in transformers: the top-k of ``cond`` alone);
* Dia's end rules: only codebook 0 may emit the end marker (1024) and only
  when it is its best token; ids above it never. They are applied before the
  top-k (so a small k cannot leave a codebook nothing to draw);
* the delay pattern: codebook c runs ``delay[c]`` frames behind codebook 0,
  so it starts with bos, its prompt codes are forced where they are known,
  and it ends ``delay[c]`` frames after codebook 0 emitted the end marker
  (or after ``max_new_tokens - 16`` frames, when forced to end), then pads;
* sampling: temperature, then top-p, then one draw per row from the row's
  own ``torch.Generator``; temperature 0 takes the best token.

The key/value cache is one tensor per layer for the whole batch. Rows are
left-padded to the batch's width and masked; a row that joins with more
frames than the batch holds widens it; columns no row uses any more are
dropped as rows leave. Everything blocks: one thread owns the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer, EncoderDecoderCache

# Everything a row needs to generate, prepared before it joins (see Prepared).
NEG_INF = -float("inf")


@dataclass(frozen=True)
class RowSettings:
    cfg_scale: float
    temperature: float  # 0 = greedy
    top_p: float
    top_k: int  # cfg_filter_top_k
    max_new_tokens: int  # frames to generate at most, end marker and delay tail included
    seed: int


@dataclass(eq=False)
class Prepared:
    """One request ready to join: its text tokens and its delayed decoder prompt."""

    text_ids: torch.Tensor  # (S,) byte tokens
    delayed: torch.Tensor  # (T, C): bos and prompt codes with the delays applied; pad where free
    prefill_frames: int  # L: frames fed before the first generated one (bos + prompt frames)
    settings: RowSettings
    tag: object = None  # the caller's handle, returned with the result


@dataclass(eq=False)
class Finished:
    tag: object
    sequence: torch.Tensor | None  # (L + generated, C): the delayed frames, prompt included, on the CPU
    prefill_frames: int
    error: Exception | None = None  # the row failed alone (could not join, or no token left); the others go on


class NoTokenLeft(Exception):
    """A row's scores left no token to choose (not numbers, or all ruled out)."""


@dataclass(eq=False)
class _Row:
    prepared: Prepared
    slot: int  # index into the batch's output buffers
    cached: int  # frames in the key/value cache
    generator: torch.Generator | None
    eos_at: int | None = None  # where codebook 0 ended, once the host has seen it (a step late)
    broken: bool = False  # its scores left no token, as the host saw a step late

    @property
    def position(self) -> int:
        """The frame the next step generates."""
        return self.cached


@dataclass
class _RowTensors:
    """Per-row settings as tensors, rebuilt when the rows change."""

    scale: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    limit: torch.Tensor  # position at which codebook 0 is forced to end
    slots: torch.Tensor
    positions: torch.Tensor  # the frame each row generates at this step
    most_k: int  # the largest top_k: how many candidates to keep
    sampled: list[int] = field(default_factory=list)  # rows with a temperature above 0
    most_sampled_k: int = 0


class DecodeBatch:
    def __init__(self, model, max_rows: int) -> None:
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        config = model.config
        decoder = config.decoder_config
        self.channels = decoder.num_channels
        self.vocab = decoder.vocab_size
        self.bos, self.eos, self.pad = decoder.bos_token_id, decoder.eos_token_id, decoder.pad_token_id
        self.delays = torch.tensor(config.delay_pattern, device=self.device)
        self.max_delay = max(config.delay_pattern)
        self.max_positions = decoder.max_position_embeddings
        self.max_rows = max_rows
        # Tokens no codebook may emit (end marker aside on codebook 0): Dia's end rules.
        ruled_out = torch.zeros((self.channels, self.vocab), dtype=torch.bool, device=self.device)
        ruled_out[1:, self.eos :] = True
        ruled_out[0, self.eos + 1 :] = True
        self.ruled_out = ruled_out
        # Output and forced-token buffers, one slot per row (slots are reused).
        self.outputs = torch.full((max_rows, self.max_positions + 1, self.channels), self.pad, device=self.device)
        self.forced = torch.full_like(self.outputs, self.pad)
        self.eos_at = torch.full((max_rows,), -1, device=self.device)  # codebook 0's end, -1 while none
        self.broken = torch.zeros((max_rows,), dtype=torch.long, device=self.device)  # 1: no token was left
        self.rows: list[_Row] = []
        self._free_slots = list(range(max_rows - 1, -1, -1))
        self._cache: EncoderDecoderCache | None = None
        self._pad_left = torch.zeros(0, dtype=torch.long, device=self.device)  # per row: unused leading columns
        self._encoder_mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self._last_tokens = torch.zeros((0, self.channels), dtype=torch.long, device=self.device)
        self._tensors: _RowTensors | None = None
        self._eos_copy: tuple | None = None  # (rows, their eos_at on the host, copy done event)

    # --- what the scheduler asks ------------------------------------------------

    @property
    def width(self) -> int:
        """Columns of the key/value cache (every row is padded to it)."""
        if self._cache is None:
            return 0
        return self._cache.self_attention_cache.layers[0].keys.shape[-2]

    def room_for(self, prefill_frames: int) -> int:
        """The most frames a row with this prefill may generate within the decoder's positions.

        Positions 0 .. L + max_new_tokens - 2 are fed (the last frame never is), so the
        prompt's frames (L - 1, bos aside) plus max_new_tokens must be at most the positions.
        """
        return self.max_positions - (prefill_frames - 1)

    def check_fits(self, prepared: Prepared) -> None:
        """ValueError when the request's prompt and length exceed the model's positions."""
        room = self.room_for(prepared.prefill_frames)
        if prepared.settings.max_new_tokens > room:
            raise ValueError(
                f"the voice prompt ({prepared.prefill_frames - 1} frames) plus max_new_tokens "
                f"({prepared.settings.max_new_tokens}) is more than the {self.max_positions} frames "
                f"Dia's decoder holds; at most {room} new frames fit"
            )

    @torch.inference_mode()
    def remove(self, tags: set) -> None:
        """Drop the rows of these callers (cancelled): they leave before the next step."""
        keep = [index for index, row in enumerate(self.rows) if row.prepared.tag not in tags]
        if len(keep) != len(self.rows):
            self._keep(keep)

    # --- one step ---------------------------------------------------------------

    @torch.inference_mode()
    def step(self, joining: list[Prepared] = ()) -> list[Finished]:
        """Advance every row one frame, `joining` rows included; returns the rows that ended."""
        logits = []
        if self.rows:
            logits.append(self._forward())
        refused = []
        for prepared in joining:
            try:
                self.check_fits(prepared)
                logits.append(self._join(prepared))
            except Exception as error:  # noqa: BLE001 - this row fails alone
                refused.append(Finished(prepared.tag, None, prepared.prefill_frames, error))
        if not self.rows:
            return refused
        tokens = self._choose(torch.cat(logits, dim=1))
        self._last_tokens = tokens
        return refused + self._collect_finished()

    def codes_so_far(self) -> list[tuple[object, torch.Tensor, int]]:
        """(tag, delayed frames so far with bos and prompt, prefill_frames) of every running row:
        what a streamed request hands its on_frames after each step (streaming.py)."""
        return [(row.prepared.tag, self.outputs[row.slot, : row.position + 1], row.prepared.prefill_frames) for row in self.rows]

    def _forward(self) -> torch.Tensor:
        """Feed each row its last frame; returns (2, rows, C, V) logits for the next."""
        rows = len(self.rows)
        width = self.width
        columns = torch.arange(width + 1, device=self.device)
        mask = (columns[None, :] >= self._pad_left[:, None]).long().repeat(2, 1)
        tensors = self._row_tensors()
        positions = tensors.positions[:, None].repeat(2, 1)
        frames = self._last_tokens.repeat(2, 1)[:, None, :]
        encoder_states = torch.zeros((), dtype=self.dtype, device=self.device).expand(
            2 * rows, self._encoder_mask.shape[1], self.model.config.encoder_config.hidden_size
        )
        output = self.model(
            encoder_outputs=(encoder_states,),
            attention_mask=self._encoder_mask,
            decoder_input_ids=frames,
            decoder_position_ids=positions,
            decoder_attention_mask=mask,
            past_key_values=self._cache,
            use_cache=True,
        )
        for row in self.rows:
            row.cached += 1
        tensors.positions += 1
        return output.logits[:, -1].float().view(2, rows, self.channels, self.vocab)

    def _join(self, prepared: Prepared) -> torch.Tensor:
        """Encode the row's text, prefill its prompt, and merge its cache; returns its (2, 1, C, V) logits."""
        text = prepared.text_ids.to(self.device)[None]
        text = torch.cat([text, torch.zeros_like(text)])  # conditioned, unconditioned
        encoder_mask = torch.ones_like(text)
        encoded = self.model.model.encoder(input_ids=text, attention_mask=encoder_mask).last_hidden_state
        prefill = prepared.delayed[: prepared.prefill_frames].to(self.device)[None].repeat(2, 1, 1)
        output = self.model(
            encoder_outputs=(encoded,),
            attention_mask=encoder_mask,
            decoder_input_ids=prefill,
            use_cache=True,
        )
        slot = self._free_slots.pop()
        self.forced[slot].fill_(self.pad)
        self.forced[slot, : len(prepared.delayed)] = prepared.delayed.to(self.device)
        self.outputs[slot].fill_(self.pad)
        self.outputs[slot, : prepared.prefill_frames] = prepared.delayed[: prepared.prefill_frames].to(self.device)
        self.eos_at[slot] = -1
        self.broken[slot] = 0
        generator = None
        if prepared.settings.temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(prepared.settings.seed)
        self._merge(output.past_key_values, encoder_mask[:1])
        self.rows.append(_Row(prepared, slot, prepared.prefill_frames, generator))
        self._tensors = None
        return output.logits[:, -1].float().view(2, 1, self.channels, self.vocab)

    # --- the cache --------------------------------------------------------------

    def _merge(self, cache: EncoderDecoderCache, encoder_mask: torch.Tensor) -> None:
        """Append a one-request cache (2 rows: cond, uncond) to the batch's."""
        new_length = cache.self_attention_cache.layers[0].keys.shape[-2]
        if self._cache is None:
            self._cache = _reserved(cache)
            self._pad_left = torch.zeros(1, dtype=torch.long, device=self.device)
            self._encoder_mask = encoder_mask.repeat(2, 1)
            return
        rows = len(self.rows)
        width = self.width
        grow = max(new_length - width, 0)  # a longer prompt widens every row on the left
        if grow:
            self._pad_left = self._pad_left + grow
        text_length = max(self._encoder_mask.shape[1], encoder_mask.shape[1])
        layers = self._cache.self_attention_cache.layers
        for index, theirs in enumerate(cache.self_attention_cache.layers):
            mine, other_left = layers[index], width + grow - new_length
            layers[index] = ReservedLayer(
                _insert_row(mine.keys, theirs.keys, rows, left=grow, other_left=other_left),
                _insert_row(mine.values, theirs.values, rows, left=grow, other_left=other_left),
            )
        for mine, theirs in zip(self._cache.cross_attention_cache.layers, cache.cross_attention_cache.layers):
            mine.keys = _insert_row(mine.keys, theirs.keys, rows, right_to=text_length)
            mine.values = _insert_row(mine.values, theirs.values, rows, right_to=text_length)
        self._pad_left = torch.cat([self._pad_left, self._pad_left.new_tensor([width + grow - new_length])])
        masks = torch.nn.functional.pad(self._encoder_mask, (0, text_length - self._encoder_mask.shape[1]))
        mask = torch.nn.functional.pad(encoder_mask, (0, text_length - encoder_mask.shape[1]))
        self._encoder_mask = torch.cat([masks[:rows], mask, masks[rows:], mask])

    def _keep(self, keep: list[int]) -> None:
        """Keep only these rows (indices into self.rows), freeing the others' slots and unused columns."""
        for index, row in enumerate(self.rows):
            if index not in keep:
                self._free_slots.append(row.slot)
        self.rows = [self.rows[index] for index in keep]
        self._tensors = None
        if not self.rows:
            self._cache = None
            self._last_tokens = self._last_tokens[:0]
            self._pad_left = self._pad_left[:0]
            self._encoder_mask = self._encoder_mask[:0]
            return
        rows = torch.tensor(keep, device=self.device)
        both = torch.cat([rows, rows + len(self._pad_left)])
        self._pad_left = self._pad_left[rows]
        unused = int(self._pad_left.min())  # leading columns no remaining row reads
        self._pad_left -= unused
        layers = self._cache.self_attention_cache.layers
        for index, layer in enumerate(layers):
            layers[index] = ReservedLayer(layer.keys[both, :, unused:], layer.values[both, :, unused:])
        for layer in self._cache.cross_attention_cache.layers:
            layer.keys, layer.values = layer.keys[both], layer.values[both]
        self._encoder_mask = self._encoder_mask[both]
        self._last_tokens = self._last_tokens[rows]

    # --- choosing tokens --------------------------------------------------------

    def _row_tensors(self) -> _RowTensors:
        if self._tensors is None:
            settings = [row.prepared.settings for row in self.rows]

            def tensor(values, dtype=torch.float32):
                return torch.tensor(values, dtype=dtype, device=self.device)

            self._tensors = _RowTensors(
                # transformers' Dia turns guidance off at scale 1 (cond alone), where the
                # formula would still give 2·cond − uncond: scale 1 guides by 0.
                scale=tensor([0.0 if s.cfg_scale == 1 else s.cfg_scale for s in settings]),
                temperature=tensor([s.temperature for s in settings]),
                top_p=tensor([s.top_p for s in settings]),
                top_k=tensor([s.top_k for s in settings], torch.long),
                limit=tensor(
                    [row.prepared.prefill_frames + row.prepared.settings.max_new_tokens - self.max_delay - 1
                     for row in self.rows], torch.long,
                ),  # fmt: skip
                slots=tensor([row.slot for row in self.rows], torch.long),
                positions=tensor([row.position for row in self.rows], torch.long),
                most_k=max(s.top_k for s in settings),
                sampled=[index for index, s in enumerate(settings) if s.temperature > 0],
                most_sampled_k=max([s.top_k for s in settings if s.temperature > 0], default=0),
            )
        return self._tensors

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next frame of every row, (rows, C), from (2, rows, C, V) logits; written to the outputs."""
        rows = self._row_tensors()
        cond, uncond = logits[0], logits[1]
        guided = cond + (cond - uncond) * rows.scale[:, None, None]
        guided = guided.masked_fill(self.ruled_out, NEG_INF)
        # Top-k per row (k differs): the k best of the guided logits keep their conditioned logits.
        most = rows.most_k
        best = guided.topk(most, dim=-1).indices
        within = torch.arange(most, device=self.device)[None, None, :] < rows.top_k[:, None, None]
        keep = torch.zeros_like(guided, dtype=torch.bool).scatter_(-1, best, within.expand_as(best))
        scores = cond.masked_fill(~keep, NEG_INF)
        # The end marker on codebook 0: the only candidate when it is the best, else none.
        best_token = scores.argmax(dim=-1)
        ends = best_token[:, 0] == self.eos
        scores[:, 0, self.eos] = torch.where(ends, scores[:, 0, self.eos], NEG_INF)
        scores[:, 0, : self.eos] = scores[:, 0, : self.eos].masked_fill(ends[:, None], NEG_INF)
        # A row whose scores are not numbers, or leave a codebook nothing, fails alone (a step later).
        broken = torch.isnan(scores).any(-1).any(-1) | ~torch.isfinite(scores).any(-1).all(-1)
        self.broken[rows.slots] |= broken.long()
        scores = scores.masked_fill(broken[:, None, None], 0.0)  # anything drawable: its tokens are dropped
        tokens = scores.argmax(dim=-1)
        if rows.sampled:
            tokens = self._sample(scores, tokens, rows)

        positions = rows.positions
        slots = rows.slots
        # Codebook 0 ends at its end marker or when max_new_tokens forces it; codebook c delay[c] later.
        eos_at = self.eos_at[slots]
        starting = (eos_at < 0) & (ends | (positions == rows.limit))
        eos_at = torch.where(starting, positions, eos_at)
        self.eos_at[slots] = eos_at
        since = (positions - eos_at)[:, None]
        ended = (eos_at >= 0)[:, None]
        tokens = torch.where(ended & (since == self.delays[None, :]), self.eos, tokens)
        tokens = torch.where(ended & (since > self.delays[None, :]), self.pad, tokens)
        # Frames the prompt (or bos) already fixes.
        forced = self.forced[slots, positions]
        tokens = torch.where(forced != self.pad, forced, tokens)
        self.outputs[slots, positions] = tokens
        return tokens

    def _sample(self, scores: torch.Tensor, greedy: torch.Tensor, rows: _RowTensors) -> torch.Tensor:
        """Draw the sampled rows' tokens among their top-k candidates (the rest are -inf anyway)."""
        index = torch.tensor(rows.sampled, device=self.device)
        most = rows.most_sampled_k
        values, candidates = scores[index].topk(most, dim=-1)  # best first
        warped = values / rows.temperature[index, None, None]
        # Top-p as transformers' TopPLogitsWarper: drop the least likely tokens that together
        # hold at most 1 - top_p of the mass, keeping the best one whatever.
        from_least = warped.softmax(dim=-1).flip(-1).cumsum(dim=-1)
        drop = (from_least <= (1 - rows.top_p[index, None, None])).flip(-1)
        drop[..., 0] = False
        probabilities = warped.masked_fill(drop, NEG_INF).softmax(dim=-1)
        tokens = greedy.clone()
        for place, row_index in enumerate(rows.sampled):
            drawn = torch.multinomial(probabilities[place], 1, generator=self.rows[row_index].generator)
            tokens[row_index] = candidates[place].gather(-1, drawn)[:, 0]
        return tokens

    def _collect_finished(self) -> list[Finished]:
        """Rows whose last codebook emitted its end marker leave now.

        Where codebook 0 ended is only on the device; reading it back every step
        would make the host wait for the device each step. So it is copied back
        without waiting and read one step later: a row ends max_delay (15)
        frames after codebook 0, so knowing a step late never delays its leaving.
        A row whose scores left no token is known the same way, and fails alone.
        """
        if self._eos_copy is not None:
            rows, copied, done = self._eos_copy
            if done is not None:
                done.synchronize()
            for row, (eos_at, broken) in zip(rows, copied.tolist()):
                if eos_at >= 0 and row.eos_at is None:
                    row.eos_at = eos_at
                row.broken = row.broken or bool(broken)
        slots = self._row_tensors().slots
        eos_at = torch.stack([self.eos_at[slots], self.broken[slots]], dim=1)
        if self.device.type == "cuda":
            copied = torch.empty(eos_at.shape, dtype=eos_at.dtype, pin_memory=True)
            copied.copy_(eos_at, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._eos_copy = (list(self.rows), copied, done)
        else:
            self._eos_copy = (list(self.rows), eos_at, None)
        finished, keep = [], []
        for index, row in enumerate(self.rows):
            if row.broken:
                finished.append(Finished(row.prepared.tag, None, row.prepared.prefill_frames, NoTokenLeft()))
            elif row.eos_at is not None and row.position == row.eos_at + self.max_delay:
                length = row.position + 1
                sequence = self.outputs[row.slot, :length].to("cpu", copy=True)
                finished.append(Finished(row.prepared.tag, sequence, row.prepared.prefill_frames))
            else:
                keep.append(index)
        if finished:
            self._keep(keep)
        return finished


class ReservedLayer(DynamicLayer):
    """A self-attention cache layer whose tensors have room reserved past their end.

    transformers' DynamicLayer concatenates at every step, copying the whole
    cache each time (its cost grows with the length, on every step). Here the
    frame a step adds is written into reserved room; only when the room is
    used up is it copied into a larger buffer (half again as long), so a step
    costs the same at frame 3000 as at frame 30.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int = 64) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self._reserve(keys, values, room)

    def _reserve(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        length = keys.shape[-2]
        shape = (*keys.shape[:-2], length + room, keys.shape[-1])
        self._keys = keys.new_empty(shape)
        self._values = values.new_empty(shape)
        self._keys[..., :length, :] = keys
        self._values[..., :length, :] = values
        self.keys, self.values = self._keys[..., :length, :], self._values[..., :length, :]

    def update(self, key_states, value_states, *args, **kwargs):
        length, added = self.keys.shape[-2], key_states.shape[-2]
        if length + added > self._keys.shape[-2]:
            self._reserve(self.keys, self.values, room=max(added, length // 2, 64))
        self._keys[..., length : length + added, :] = key_states
        self._values[..., length : length + added, :] = value_states
        self.keys = self._keys[..., : length + added, :]
        self.values = self._values[..., : length + added, :]
        return self.keys, self.values


def _reserved(cache: EncoderDecoderCache) -> EncoderDecoderCache:
    """The cache with its self-attention layers replaced by ReservedLayer (same contents)."""
    layers = cache.self_attention_cache.layers
    for index, layer in enumerate(layers):
        layers[index] = ReservedLayer(layer.keys, layer.values)
    return cache


def _insert_row(
    batch: torch.Tensor, row: torch.Tensor, rows: int, left: int = 0, other_left: int = 0, right_to: int | None = None
) -> torch.Tensor:
    """Insert a request's (cond, uncond) cache rows after the batch's cond and uncond rows.

    Self-attention caches are padded on the left (`left` for the batch, `other_left`
    for the row) to a common width; cross-attention ones on the right to `right_to`.
    """
    pad = torch.nn.functional.pad
    if right_to is not None:
        batch = pad(batch, (0, 0, 0, right_to - batch.shape[-2]))
        row = pad(row, (0, 0, 0, right_to - row.shape[-2]))
    else:
        batch = pad(batch, (0, 0, left, 0))
        row = pad(row, (0, 0, other_left, 0))
    return torch.cat([batch[:rows], row[:1], batch[rows:], row[1:]])
