"""Requests the runner tests share, the runner driven step by step, and the stock reference:
transformers' own `DiaForConditionalGeneration.generate`, unmodified."""

from __future__ import annotations

import numpy as np
import torch
from transformers import GenerationConfig

from services.synth import audio
from services.synth.engine.prompts import Prepared, Preparer
from services.synth.engine.request import RowSettings
from services.synth.engine.runner import DecodeBatch, Finished
from tests.synth.helpers import noise_wav


def prompt(seconds: float | None) -> np.ndarray | None:
    return audio.read_prompt(noise_wav(seconds, seed=int(seconds * 10)), max_seconds=10) if seconds else None


# (text, prompt seconds or None, max_new_tokens, cfg_scale, cfg_filter_top_k): lengths and settings differ.
CASES = [
    ("[S1] Hello there.", None, 60, 3.0, 45),
    ("[S1] A much longer line than the first one. [S2] And a reply to it.", None, 80, 2.0, 10),
    ("[S1] Prompt words. [S1] New words.", 0.4, 50, 3.0, 45),
    ("[S1] Longer prompt words here. [S2] New words.", 1.3, 70, 1.0, 3),
]


def settings(case, temperature: float = 0.0, seed: int = 1, top_k: int | None = None) -> RowSettings:
    _, _, frames, scale, own_k = case
    return RowSettings(scale, temperature, 0.95, own_k if top_k is None else top_k, frames, seed)


def prepared(preparer: Preparer, index: int, **changes) -> Prepared:
    text, seconds, *_ = CASES[index]
    return preparer.prepare(text, prompt(seconds), settings(CASES[index], **changes), index)


def run(
    model, preparer, arrivals: dict[int, list[int]], compiled=False, seeds: dict[int, int] | None = None, **changes
) -> tuple[dict[int, Finished], DecodeBatch]:
    """Step a batch until it is empty; arrivals maps a step to the cases that join at it (tagged by
    index), `seeds` a case to its seed (1 otherwise)."""
    batch = DecodeBatch(model, max_rows=8, compiled=compiled)
    finished, step = {}, 0
    while step <= max(arrivals) or batch.rows:
        joining = [
            prepared(preparer, index, seed=(seeds or {}).get(index, 1), **changes) for index in arrivals.get(step, [])
        ]
        for done in batch.step(joining):
            finished[done.tag] = done
        step += 1
    return finished, batch


def stock_generate(dia, model, index: int, top_k: int | None = None, **outputs):
    """Case `index` through transformers' own generate on `model`, greedy: its delayed frames (T, C),
    prompt included, as the runner's Finished.sequence holds them; with `outputs` (output_scores...),
    generate's whole output."""
    text, seconds, frames, scale, own_k = CASES[index]
    samples = prompt(seconds)
    inputs = dia.processor(
        text=[text], audio=None if samples is None else [samples], padding="longest", return_tensors="pt"
    ).to(model.device)
    config = GenerationConfig(
        do_sample=False,
        temperature=1.0,  # greedy either way; 1 keeps Dia from adding a TemperatureLogitsWarper
        guidance_scale=scale,
        top_k=own_k if top_k is None else top_k,
        max_new_tokens=frames,
        use_cache=True,
        **dia.special_tokens,
    )
    output = model.generate(**inputs, generation_config=config, return_dict_in_generate=bool(outputs), **outputs)
    if outputs:
        return output
    return output[0].cpu()


def same_frames(ours: Finished, stock: torch.Tensor) -> bool:
    return ours.error is None and torch.equal(ours.sequence, stock)
