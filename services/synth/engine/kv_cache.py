"""The slot-resident key/value cache of a lane's rows.

Per decoder layer one key and one value tensor for the lane's most rows, row
i's conditioned sequence in slot 2i and its unconditioned one in 2i+1, so the
running rows are always a prefix and a step reads a slice of the buffers, not
a copy. A row's frame at position p sits in column p (no padding); columns
are allocated in buckets of COLUMN_ALLOCATION as the longest row grows
(copied only when they grow a bucket; held until the lane empties), up to the
decoder's positions. Text encodings' cross-attention keys and values are kept
the same way, computed once when a row joins. A join copies only its own keys
and values into its slots; a leave moves the last row into the freed slots:
both cost one row, not the lane.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import EncoderDecoderCache

# Self-attention columns are allocated (and copied, when they grow) this many at a time.
COLUMN_ALLOCATION = 256
TEXT_BUCKET = 64  # the same for the text's columns (cross-attention)


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
