"""The decoder's maths for one new frame per sequence: transformers' DiaDecoder over the model's own modules.

A plain function of tensors, with per-row positions and the slot cache's
buffers passed whole, so that torch.compile can wrap it (SYNTH_COMPILE: CUDA
graphs on a GPU).
"""

from __future__ import annotations

import torch
from transformers.models.dia.modeling_dia import apply_rotary_pos_emb


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
