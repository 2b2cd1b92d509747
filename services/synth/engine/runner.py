"""The model runner: each lane's batch state, its key/value cache, and the model's step.

A lane is a batch of rows stepped together: the shared one, and one of its
own for each request the scheduler runs alone (seeded, or retried after a
failed step). :class:`ModelRunner` holds the lanes and steps them as the
engine's core tells it (who joins which lane, who leaves); it decides
nothing about who that is.

One :class:`DecodeBatch` holds a lane's rows. Each call of
:meth:`DecodeBatch.step` advances every row by one frame; rows passed to it
join at that step (their text is encoded once and their prompt prefilled),
and rows that emitted their last frame leave it. Rows differ in everything:
text and prompt lengths, cfg_scale, temperature, top_p, cfg_filter_top_k,
max_new_tokens, seed. The sampler (sampler.py) turns a step's logits into
each row's next frame; the runner adds the frames a row's prompt (or bos)
already fixes, Dia's delay pattern applied to its input (prompts.py).

The key/value cache is slot-resident (kv_cache.py): the running rows are
always the first slots, a step attends over the longest row's columns
rounded up to COLUMN_BUCKET, each row masked beyond its own position. A join
prefills its prompt alone through the model's forward and copies only its
own keys and values into its slots; a leave moves the last row into the
freed slots. A step runs model_step.decoder_step (or its torch.compile'd
form, SYNTH_COMPILE). Everything blocks: one thread owns the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.synth.config import SYNTH_COMPILE
from services.synth.engine import model_step
from services.synth.engine.kv_cache import SlotCache
from services.synth.engine.prompts import Prepared
from services.synth.engine.request import SHARED_LANE
from services.synth.engine.sampler import Sampler, SamplingMetadata
from services.synth.params import room_for_new_frames

# A step attends over the longest row's columns rounded up to this, so that shapes repeat (what
# CUDA graphs and torch.compile need) while short batches don't read a long buffer.
COLUMN_BUCKET = 64


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


class DecodeBatch:
    def __init__(self, model, max_rows: int, compiled: bool | None = None) -> None:
        """`compiled`: run the steps through torch.compile (None: as SYNTH_COMPILE says)."""
        self.model = model
        self.device = model.device
        config = model.config
        decoder = config.decoder_config
        self.channels = decoder.num_channels
        self.vocab = decoder.vocab_size
        self.pad = decoder.pad_token_id
        self.max_delay = max(config.delay_pattern)
        self.max_positions = decoder.max_position_embeddings
        self.max_rows = max_rows
        self.sampler = Sampler(
            self.channels, self.vocab, decoder.eos_token_id, self.pad, config.delay_pattern, self.device
        )
        # Output and forced-token buffers, one slot per row (slots are reused).
        self.outputs = torch.full((max_rows, self.max_positions + 1, self.channels), self.pad, device=self.device)
        self.forced = torch.full_like(self.outputs, self.pad)
        self.eos_at = torch.full((max_rows,), -1, device=self.device)  # codebook 0's end, -1 while none
        self.broken = torch.zeros((max_rows,), dtype=torch.long, device=self.device)  # 1: no token was left
        self.rows: list[_Row] = []
        self._free_slots = list(range(max_rows - 1, -1, -1))
        self.compiled = SYNTH_COMPILE.value if compiled is None else compiled
        self._compiled_step = model_step.compiled_decoder_step(self.device.type) if self.compiled else None
        self.cache = SlotCache(model, max_rows, static=self.compiled and self.device.type == "cuda")
        self._last_tokens = torch.zeros((0, self.channels), dtype=torch.long, device=self.device)
        self._metadata: SamplingMetadata | None = None  # rebuilt when the rows change
        self._slots: torch.Tensor | None = None
        self._eos_copy: tuple | None = None  # (rows, their eos_at on the host, copy done event)

    @property
    def width(self) -> int:
        """Key/value columns the next step attends over: the longest row's, once that step has
        written its frame, rounded up to COLUMN_BUCKET (0 with no rows)."""
        if not self.rows:
            return 0
        needed = max(row.cached for row in self.rows) + 1
        # Within what the cache allocates for it: buckets of COLUMN_ALLOCATION (a multiple), or the positions.
        return min(-(-needed // COLUMN_BUCKET) * COLUMN_BUCKET, max(needed, self.max_positions))

    def check_fits(self, prepared: Prepared) -> None:
        """ValueError when the row's prompt and length exceed the model's positions.

        Positions 0 .. L + max_new_tokens - 2 are fed (the last frame never is): the prompt's
        frames (L - 1, bos aside) and max_new_tokens share the decoder's positions.
        """
        prompt_frames = prepared.prefill_frames - 1
        room = room_for_new_frames(prompt_frames, self.max_positions)
        if prepared.settings.max_new_tokens > room:
            raise ValueError(
                f"the voice prompt ({prompt_frames} frames) plus max_new_tokens "
                f"({prepared.settings.max_new_tokens}) is more than the {self.max_positions} frames "
                f"Dia's decoder holds; at most {room} new frames fit"
            )

    @torch.inference_mode()
    def remove(self, tags: set) -> None:
        """Drop the rows of these callers (cancelled): they leave before the next step."""
        keep = [index for index, row in enumerate(self.rows) if row.prepared.tag not in tags]
        if len(keep) != len(self.rows):
            self._keep(keep)

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
        self._last_tokens = self._choose(torch.cat(logits, dim=1))
        return refused + self._collect_finished()

    def codes_so_far(self) -> list[tuple[object, torch.Tensor, int]]:
        """(tag, delayed frames so far with bos and prompt, prefill_frames) of every running row:
        what a streamed request hands its on_frames after each step (streaming.py)."""
        return [(row.prepared.tag, self.outputs[row.slot, : row.position + 1], row.prepared.prefill_frames) for row in self.rows]

    def _forward(self) -> torch.Tensor:
        """Feed each row its last frame; returns (2, rows, C, V) logits for the next."""
        rows = len(self.rows)
        metadata = self._sampling_metadata()
        # Fed positions stop at max_positions - 1 (check_fits): at most max_positions columns, a multiple of 64 in Dia.
        self.cache.reserve_columns(max(row.cached for row in self.rows) + 1, rows, self.max_positions)
        frames, positions = _twice(self._last_tokens), _twice(metadata.positions)  # cond and uncond side by side
        if self.compiled:
            # Compiled code is specialised to shapes: rows padded to a power of two repeat them. The padding
            # rows feed pad at position 0 into free slots (a join overwrites them); their logits are dropped.
            fed = min(1 << (rows - 1).bit_length(), self.max_rows)
            frames = torch.nn.functional.pad(frames, (0, 0, 0, 2 * (fed - rows)), value=self.pad)
            positions = torch.nn.functional.pad(positions, (0, 2 * (fed - rows)))
        step = self._compiled_step or model_step.decoder_step  # looked up each step (tests wrap it to fail)
        logits = step(self.model, frames, positions, *self.cache.buffers(), self.width)
        logits = logits[: 2 * rows]
        for row in self.rows:
            row.cached += 1
        metadata.positions += 1
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
        self._metadata = self._slots = None
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
        self._metadata = self._slots = None
        if not self.rows:
            self.cache.release()

    def _sampling_metadata(self) -> SamplingMetadata:
        if self._metadata is None:
            self._metadata = SamplingMetadata.of(
                [row.prepared.settings for row in self.rows],
                [row.prepared.prefill_frames for row in self.rows],
                [row.position for row in self.rows],
                [row.generator for row in self.rows],
                self.max_delay,
                self.device,
            )
        return self._metadata

    def _row_slots(self) -> torch.Tensor:
        if self._slots is None:
            self._slots = torch.tensor([row.slot for row in self.rows], dtype=torch.long, device=self.device)
        return self._slots

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next frame of every row, (rows, C), from (2, rows, C, V) logits; written to the outputs."""
        metadata, slots = self._sampling_metadata(), self._row_slots()
        sampled = self.sampler(logits, metadata, self.eos_at[slots])
        self.eos_at[slots] = sampled.eos_at
        self.broken[slots] |= sampled.broken.long()  # it fails alone, a step later (_collect_finished)
        # Frames the prompt (or bos) already fixes.
        positions = metadata.positions
        forced = self.forced[slots, positions]
        tokens = torch.where(forced != self.pad, forced, sampled.tokens)
        self.outputs[slots, positions] = tokens
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
        slots = self._row_slots()
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


def _twice(rows: torch.Tensor) -> torch.Tensor:
    """Each row's tensor for both its sequences (cond, uncond), side by side as in the cache's slots."""
    return rows[:, None].expand(rows.shape[0], 2, *rows.shape[1:]).reshape(2 * rows.shape[0], *rows.shape[1:])


@dataclass
class StepResult:
    finished: list[Finished]  # rows that ended, or failed alone (their error set)
    failed: list[tuple[Exception, list[object]]]  # lanes whose step raised (dropped): the error, their rows' tags
    frames: int  # frames generated, all lanes


class ModelRunner:
    """Every lane's DecodeBatch; one step of them all at a time."""

    def __init__(self, model, max_rows: int, compiled: bool | None = None) -> None:
        self.model, self.max_rows, self.compiled = model, max_rows, compiled
        self.lanes: dict[int, DecodeBatch] = {}
        self.reset()

    def reset(self) -> None:
        """Drop every lane and its rows (after a failure that left their state unknown)."""
        self.lanes = {SHARED_LANE: DecodeBatch(self.model, self.max_rows, self.compiled)}

    def remove(self, lane: int, tags: set) -> None:
        if lane in self.lanes:
            self.lanes[lane].remove(tags)

    def step(self, leaving: dict[int, set], joining: dict[int, list[Prepared]]) -> StepResult:
        """One step of every lane with rows: `leaving` (lane → tags) leave first, `joining` (lane →
        rows) join; a lane not seen before is a lane of one. A lane whose step raises is dropped,
        and the rows it held are reported with the error: the others' steps go on."""
        for lane, tags in leaving.items():
            self.remove(lane, tags)
        for lane in joining:
            if lane not in self.lanes:
                self.lanes[lane] = DecodeBatch(self.model, 1, self.compiled)
        finished, failed, frames = [], [], 0
        for lane, batch in list(self.lanes.items()):
            arriving = joining.get(lane, [])
            if not (batch.rows or arriving):
                continue
            members = [row.prepared.tag for row in batch.rows] + [prepared.tag for prepared in arriving]
            try:
                ended = batch.step(arriving)
            except Exception as error:  # noqa: BLE001 - in no state to go on: the lane is dropped
                failed.append((error, members))
                del self.lanes[lane]
                continue
            finished += ended
            frames += len(batch.rows) + sum(done.sequence is not None for done in ended)
        self.lanes = {lane: batch for lane, batch in self.lanes.items() if batch.rows or lane == SHARED_LANE}
        if SHARED_LANE not in self.lanes:
            self.lanes[SHARED_LANE] = DecodeBatch(self.model, self.max_rows, self.compiled)
        return StepResult(finished, failed, frames)

    def codes_so_far(self) -> list[tuple[object, torch.Tensor, int]]:
        """Every running row's (tag, delayed frames so far, prefill_frames), all lanes."""
        return [row for batch in self.lanes.values() for row in batch.codes_so_far()]
