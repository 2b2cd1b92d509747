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

The key/value cache is slot-resident (:class:`SlotCache`): per decoder
layer one key and one value tensor for the batch's most rows, row i's
conditioned sequence in slot 2i and its unconditioned one in 2i+1, so the
running rows are always a prefix and a step reads a slice of the buffers,
not a copy. A row's frame at position p sits in column p (no padding);
columns are allocated in buckets of COLUMN_ALLOCATION as the longest row
grows (copied only when they grow a bucket; held until the batch empties),
up to the decoder's positions, and a step attends over the longest row's columns rounded up to
COLUMN_BUCKET, each row masked beyond its own position. Text encodings'
cross-attention keys and values are kept the same way, computed once when a
row joins. A join prefills its prompt alone through the model's forward and
copies only its own keys and values into its slot; a leave moves the last
row into the freed slot: both cost one row, not the batch.

A step runs :func:`decoder_step`, the maths of transformers' DiaDecoder for
one new frame written over the model's own modules, with per-row positions
(a plain function of tensors, so torch.compile can wrap it). Everything
blocks: one thread owns the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.dia.modeling_dia import apply_rotary_pos_emb

from services.synth.config import SYNTH_COMPILE

NEG_INF = -float("inf")
# A step attends over the longest row's columns rounded up to this, so that shapes repeat (what
# CUDA graphs and torch.compile need) while short batches don't read a long buffer.
COLUMN_BUCKET = 64
# Self-attention columns are allocated (and copied, when they grow) this many at a time.
COLUMN_ALLOCATION = 256
TEXT_BUCKET = 64  # the same for the text's columns (cross-attention)


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
    slot: int  # index into the batch's output buffers (its cache slots follow its place in DecodeBatch.rows)
    cached: int  # frames in the key/value cache (its columns 0 .. cached - 1)
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
    def __init__(self, model, max_rows: int, compiled: bool | None = None) -> None:
        """`compiled`: run the steps through torch.compile (None: as SYNTH_COMPILE says)."""
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
        self.compiled = SYNTH_COMPILE.value if compiled is None else compiled
        self._compiled_step = compiled_decoder_step(self.device.type) if self.compiled else None
        self.cache = SlotCache(model, max_rows, static=self.compiled and self.device.type == "cuda")
        self._last_tokens = torch.zeros((0, self.channels), dtype=torch.long, device=self.device)
        self._tensors: _RowTensors | None = None
        self._eos_copy: tuple | None = None  # (rows, their eos_at on the host, copy done event)

    # --- what the scheduler asks ------------------------------------------------

    @property
    def width(self) -> int:
        """Key/value columns the next step attends over: the longest row's, once that step has
        written its frame, rounded up to COLUMN_BUCKET (0 with no rows)."""
        if not self.rows:
            return 0
        needed = max(row.cached for row in self.rows) + 1
        # Within what the cache allocates for it: buckets of COLUMN_ALLOCATION (a multiple), or the positions.
        return min(-(-needed // COLUMN_BUCKET) * COLUMN_BUCKET, max(needed, self.max_positions))

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
        tensors = self._row_tensors()
        # Fed positions stop at max_positions - 1 (check_fits): at most max_positions columns, a multiple of 64 in Dia.
        self.cache.reserve_columns(max(row.cached for row in self.rows) + 1, rows, self.max_positions)
        frames, positions = _twice(self._last_tokens), _twice(tensors.positions)  # cond and uncond side by side
        fed = rows
        if self.compiled:
            # Compiled code is specialised to shapes: rows padded to a power of two repeat them. The padding
            # rows feed pad at position 0 into free slots (a join overwrites them); their logits are dropped.
            fed = min(1 << (rows - 1).bit_length(), self.max_rows)
            frames = torch.nn.functional.pad(frames, (0, 0, 0, 2 * (fed - rows)), value=self.pad)
            positions = torch.nn.functional.pad(positions, (0, 2 * (fed - rows)))
        step = self._compiled_step or decoder_step  # the module's, looked up each step (tests wrap it to fail)
        logits = step(self.model, frames, positions, *self.cache.buffers(), self.width)
        logits = logits[: 2 * rows]
        for row in self.rows:
            row.cached += 1
        tensors.positions += 1
        return logits.float().view(rows, 2, self.channels, self.vocab).transpose(0, 1)

    def _join(self, prepared: Prepared) -> torch.Tensor:
        """Encode the row's text, prefill its prompt, and copy its cache into its slots; returns its (2, 1, C, V) logits."""
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
        self.cache.put(len(self.rows), output.past_key_values, self.max_positions)
        self.rows.append(_Row(prepared, slot, prepared.prefill_frames, generator))
        self._tensors = None
        return output.logits[:, -1].float().view(2, 1, self.channels, self.vocab)

    def _keep(self, keep: list[int]) -> None:
        """Keep only these rows (indices into self.rows), freeing the others' slots.

        Each row that leaves gets the last row moved into its place (and cache
        slots), so the running rows stay a prefix of the cache: one row copied
        per leave, however many rows and frames the batch holds.
        """
        kept = set(keep)
        leaving = [index for index in range(len(self.rows)) if index not in kept]
        for index in leaving:
            self._free_slots.append(self.rows[index].slot)
        order = list(range(len(self.rows)))  # order[i]: the row now at place i
        for index in reversed(leaving):  # from the end: the last row is then never one that leaves
            last = len(order) - 1
            if index != last:
                self.cache.move(last, index)
                order[index] = order[last]
            order.pop()
        self.rows = [self.rows[index] for index in order]
        self._last_tokens = self._last_tokens[order]
        self._tensors = None
        if not self.rows:
            self.cache.release()

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



class SlotCache:
    """The self- and cross-attention keys and values of every row, each in its slots.

    Per decoder layer, keys and values are (2 * max_rows, kv_heads, columns,
    head_dim): row i's conditioned sequence in slot 2i, its unconditioned one
    in 2i + 1, its frame at position p in column p. Columns are allocated as
    the longest row needs them, COLUMN_ALLOCATION at a time; the text's
    columns likewise, with a mask of each sequence's text length. Slots past
    the running rows, and columns past a row's position, hold stale values
    that the masks hide; they are zeros or finite (a row's slot is cleared
    when it joins), so a masked column never turns a sum into NaN.
    """

    def __init__(self, model, max_rows: int, static: bool = False) -> None:
        """`static`: mark the buffers' addresses static, so CUDA graphs that write into them can be replayed."""
        decoder = model.config.decoder_config
        self.static = static
        self.sequences = 2 * max_rows
        self.layers = decoder.num_hidden_layers
        self.dtype, self.device = model.dtype, model.device
        self._self_shape = (decoder.num_key_value_heads or decoder.num_attention_heads, decoder.head_dim)
        self._cross_shape = (decoder.cross_num_key_value_heads, decoder.cross_head_dim)
        self.release()

    def release(self) -> None:
        """Drop every buffer (no rows left): memory follows the rows that run."""
        self.columns = self.text_columns = 0
        self.self_keys = self._empty(self._self_shape, 0)
        self.self_values = self._empty(self._self_shape, 0)
        self.cross_keys = self._empty(self._cross_shape, 0)
        self.cross_values = self._empty(self._cross_shape, 0)
        self.text_mask = torch.zeros((self.sequences, 0), dtype=torch.bool, device=self.device)

    def _empty(self, shape: tuple[int, int], columns: int) -> list[torch.Tensor]:
        heads, head_dim = shape
        tensors = [
            torch.zeros((self.sequences, heads, columns, head_dim), dtype=self.dtype, device=self.device)
            for _ in range(self.layers)
        ]
        if self.static:
            for tensor in tensors:  # a grown buffer moves: the graphs are recorded again (rare: once a bucket)
                torch._dynamo.mark_static_address(tensor)
        return tensors

    def reserve_columns(self, needed: int, rows: int, most: int) -> None:
        """At least `needed` self-attention columns (at most `most` are ever allocated); the first `rows` rows are kept."""
        if needed <= self.columns:
            return
        columns = max(needed, min(-(-needed // COLUMN_ALLOCATION) * COLUMN_ALLOCATION, most))
        self.self_keys = self._grown(self.self_keys, self._self_shape, columns, rows)
        self.self_values = self._grown(self.self_values, self._self_shape, columns, rows)
        self.columns = columns

    def _reserve_text(self, needed: int, rows: int) -> None:
        if needed <= self.text_columns:
            return
        columns = -(-needed // TEXT_BUCKET) * TEXT_BUCKET
        self.cross_keys = self._grown(self.cross_keys, self._cross_shape, columns, rows)
        self.cross_values = self._grown(self.cross_values, self._cross_shape, columns, rows)
        mask = torch.zeros((self.sequences, columns), dtype=torch.bool, device=self.device)
        mask[: 2 * rows, : self.text_columns] = self.text_mask[: 2 * rows]
        if self.static:
            torch._dynamo.mark_static_address(mask)
        self.text_mask = mask
        self.text_columns = columns

    def _grown(self, tensors: list[torch.Tensor], shape: tuple[int, int], columns: int, rows: int) -> list[torch.Tensor]:
        grown = self._empty(shape, columns)
        for old, new in zip(tensors, grown):
            new[: 2 * rows, :, : old.shape[2]] = old[: 2 * rows]
        return grown

    def put(self, row: int, cache: EncoderDecoderCache, most_columns: int) -> None:
        """Copy a one-request cache (2 sequences: cond, uncond) from the model's forward into row `row`'s slots."""
        length = cache.self_attention_cache.layers[0].keys.shape[-2]
        text_length = cache.cross_attention_cache.layers[0].keys.shape[-2]
        self.reserve_columns(length, row, most_columns)
        self._reserve_text(text_length, row)
        slots = slice(2 * row, 2 * row + 2)
        for index in range(self.layers):
            theirs, cross = cache.self_attention_cache.layers[index], cache.cross_attention_cache.layers[index]
            for mine, values in ((self.self_keys, theirs.keys), (self.self_values, theirs.values)):
                mine[index][slots, :, :length] = values
                mine[index][slots, :, length:] = 0  # what a previous row left: hidden, but it may be NaN
            for mine, values in ((self.cross_keys, cross.keys), (self.cross_values, cross.values)):
                mine[index][slots, :, :text_length] = values
                mine[index][slots, :, text_length:] = 0
        self.text_mask[slots] = torch.arange(self.text_columns, device=self.device) < text_length

    def move(self, source: int, target: int) -> None:
        """Row `source`'s keys and values (all its columns) into row `target`'s slots."""
        into, out_of = slice(2 * target, 2 * target + 2), slice(2 * source, 2 * source + 2)
        for tensors in (self.self_keys, self.self_values, self.cross_keys, self.cross_values):
            for layer in tensors:
                layer[into] = layer[out_of]
        self.text_mask[into] = self.text_mask[out_of]

    def buffers(self) -> tuple:
        """(self keys, self values, cross keys, cross values, text mask): decoder_step's cache arguments."""
        return self.self_keys, self.self_values, self.cross_keys, self.cross_values, self.text_mask


def decoder_step(
    model,
    frames: torch.Tensor,
    positions: torch.Tensor,
    self_keys: list[torch.Tensor],
    self_values: list[torch.Tensor],
    cross_keys: list[torch.Tensor],
    cross_values: list[torch.Tensor],
    text_mask: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Transformers' DiaDecoder (and logits head) for one new frame per sequence, at each one's own position.

    frames (B, C) are fed at positions (B,) to the first B slots of the cache
    (SlotCache's buffers, passed whole so that their addresses stay those
    CUDA graphs recorded): their keys and values are written into self_keys /
    self_values (slots, kv_heads, columns, head_dim) at those columns, and
    each sequence attends over columns 0 .. its position among the first
    `width` (the rest masked). Cross-attention reads cross_keys/cross_values
    (slots, kv_heads, T, head_dim) where text_mask (slots, T) is True.
    Returns (B, C, V) logits in the model's dtype. No branch depends on the
    tensors' values, so torch.compile can wrap it.
    """
    decoder = model.model.decoder
    count = frames.shape[0]
    hidden = decoder.embeddings(frames[:, None, :])  # (B, 1, hidden)
    cos, sin = decoder.rotary_emb(hidden, position_ids=positions[:, None])
    columns = torch.arange(width, device=frames.device)
    visible = (columns[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, W)
    text_visible = text_mask[:count, None, None, :]
    sequences = torch.arange(count, device=frames.device)
    for index, layer in enumerate(decoder.layers):
        attention = layer.self_attention
        normed = layer.pre_sa_norm(hidden)
        query = attention.q_proj(normed).view(count, 1, -1, attention.head_dim).transpose(1, 2)
        key = attention.k_proj(normed).view(count, 1, -1, attention.head_dim).transpose(1, 2)
        value = attention.v_proj(normed).view(count, 1, -1, attention.head_dim).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        keys, values = self_keys[index][:count, :, :width], self_values[index][:count, :, :width]
        keys[sequences, :, positions] = key[:, :, 0]
        values[sequences, :, positions] = value[:, :, 0]
        attended = _attend(query, keys, values, visible, attention.scaling)
        hidden = hidden + attention.o_proj(attended)

        cross = layer.cross_attention
        normed = layer.pre_ca_norm(hidden)
        query = cross.q_proj(normed).view(count, 1, -1, cross.head_dim).transpose(1, 2)
        attended = _attend(query, cross_keys[index][:count], cross_values[index][:count], text_visible, cross.scaling)
        hidden = hidden + cross.o_proj(attended)

        hidden = hidden + layer.mlp(layer.pre_mlp_norm(hidden))
    hidden = decoder.norm(hidden)
    return model.logits_dense(hidden[:, 0]).view(count, decoder.num_channels, decoder.vocab_size)


_COMPILED: dict[str, object] = {}


def compiled_decoder_step(device_type: str):
    """decoder_step under torch.compile, one per device type, shared by every batch (compiled once).

    On CUDA in mode reduce-overhead: CUDA graphs, replayed while the shapes
    (padded rows, column bucket) repeat, so a step costs one launch instead of
    one per kernel.
    """
    if device_type not in _COMPILED:
        _COMPILED[device_type] = torch.compile(decoder_step, mode="reduce-overhead" if device_type == "cuda" else None)
    return _COMPILED[device_type]


def _twice(rows: torch.Tensor) -> torch.Tensor:
    """Each row's tensor for both its sequences (cond, uncond), side by side as in the cache's slots."""
    return rows[:, None].expand(rows.shape[0], 2, *rows.shape[1:]).reshape(2 * rows.shape[0], *rows.shape[1:])


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor, scale: float):
    """Attention of one query frame (B, heads, 1, d) over keys/values (B, kv_heads, W, d); returns (B, 1, heads * d).

    Query heads that share a key/value head (grouped-query attention) are
    packed as that head's queries, so nothing is repeated and the mask
    applies as it is. Dia's scale is 1 (its weights are trained without the
    usual 1/sqrt(d); transformers passes its `scaling` to the kernel).
    """
    count, heads, _, size = query.shape
    kv_heads = keys.shape[1]
    packed = query.reshape(count, kv_heads, heads // kv_heads, size)
    output = torch.nn.functional.scaled_dot_product_attention(packed, keys, values, attn_mask=visible, scale=scale)
    return output.reshape(count, 1, heads * size)
