"""What the real Dia checkpoint differs in from a bare tiny model, on the tiny one.

* its generation_config.json carries sampling settings (do_sample, temperature
  about 1.2, top_k 45, top_p 0.95) that must not shape our sampling;
* a request the model gives no usable scores fails alone, never its batch-mates;
* its decoder has 3072 positions, shared by the prompt's frames and the new ones.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import grpc
import numpy as np
import pytest
import torch

from runtime.errors import ApiError
from services.synth import audio
from services.synth.engine import model
from services.synth.engine.core import SynthEngine
from services.synth.engine.model import ModelLoadError
from services.synth.engine.prompts import Preparer
from services.synth.engine.request import RowSettings, SynthesisInput
from services.synth.engine.runner import DecodeBatch
from services.synth.params import FRAMES_WITHOUT_AUDIO, GenerationParams, fit_positions, frames_of
from tests.synth.helpers import error_of, noise_wav, request

SAMPLED = GenerationParams(3.0, 1.8, 0.95, 45, 40, 1.0, None)


# --- the checkpoint's generation_config.json ---------------------------------------------


def test_the_tiny_model_carries_the_real_checkpoints_sampling_settings(tiny_model_dir):
    saved = json.loads((tiny_model_dir / "dia" / "generation_config.json").read_text())
    assert saved["do_sample"] is True and saved["temperature"] == pytest.approx(1.2)
    assert (saved["top_k"], saved["top_p"]) == (45, 0.95)


@pytest.fixture(scope="module")
def dia_without_sampling_settings(tiny_model_dir, tmp_path_factory):
    """The same tiny Dia, its generation_config.json holding token ids only."""
    folder = tmp_path_factory.mktemp("plain") / "dia"
    shutil.copytree(tiny_model_dir / "dia", folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({k: v for k, v in config.items() if "token_id" in k}))
    return model.load(str(folder), str(tiny_model_dir / "dac"), "plain", "cpu", threads=1)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0, 1.8])
def test_the_checkpoints_sampling_settings_change_nothing(dia, dia_without_sampling_settings, temperature):
    def frames(loaded) -> list[torch.Tensor]:
        preparer = Preparer(loaded.processor, loaded.delay_pattern, loaded.special_tokens, None)
        batch = DecodeBatch(loaded.model, max_rows=2)
        settings = [RowSettings(3.0, temperature, 0.95, 45, 40, seed) for seed in (5, 6)]
        finished = batch.step([preparer.prepare("[S1] Hello there, how are you?", None, row, row.seed) for row in settings])
        while batch.rows:
            finished += batch.step()
        return [done.sequence for done in sorted(finished, key=lambda done: done.tag)]

    for ours, plain in zip(frames(dia), frames(dia_without_sampling_settings)):
        assert torch.equal(ours, plain)


# --- a row the model gives no usable scores -------------------------------------------------------


async def test_a_row_the_model_gives_no_usable_scores_fails_alone_in_its_batch(dia):
    # NaN logits for the second request's two sequences (conditioned, unconditioned) while all three run.
    def poison(module, inputs, output):
        if output.dim() == 2 and output.shape[0] == 6:  # a step of the three rows, not a prefill
            output[2:4] = float("nan")
        return output

    requests = [SynthesisInput(f"[S1] Hello number {n}.", None, SAMPLED, seed) for n, seed in enumerate((4, 5, 6))]
    engine = SynthEngine(4, 0.0, 8, 10**9, 0)
    engine.start(dia)
    hook = dia.model.logits_dense.register_forward_hook(poison)
    try:
        results = await asyncio.gather(*(engine.submit(r) for r in requests), return_exceptions=True)
    finally:
        hook.remove()
        await engine.close()
    assert isinstance(results[1], ApiError) and results[1].reason == "GENERATION_FAILED"
    assert results[0].generated_frames == results[2].generated_frames == 40


# --- the decoder's positions ----------------------------------------------------------------


def params_with(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(3.0, 1.8, 0.95, 45, max_new_tokens, 1.0, None)


def test_prompt_frames_and_max_new_tokens_share_the_decoders_positions():
    assert fit_positions(params_with(3072), 0, 3072, lower_to_fit=False).max_new_tokens == 3072
    assert fit_positions(params_with(2211), 861, 3072, lower_to_fit=False).max_new_tokens == 2211
    # Not chosen by the caller: lowered to what fits.
    assert fit_positions(params_with(3072), 861, 3072, lower_to_fit=True).max_new_tokens == 2211
    with pytest.raises(ApiError) as alone:
        fit_positions(params_with(3073), 0, 3072, lower_to_fit=False)
    assert (alone.value.reason, alone.value.param) == ("INVALID_PARAMETER", "max_new_tokens")
    assert "3072" in alone.value.message
    with pytest.raises(ApiError) as beside:
        fit_positions(params_with(2212), 861, 3072, lower_to_fit=False)
    assert beside.value.param == "max_new_tokens" and "at most 2211" in beside.value.message
    with pytest.raises(ApiError) as no_room:
        fit_positions(params_with(3072), 3072 - FRAMES_WITHOUT_AUDIO, 3072, lower_to_fit=True)
    assert no_room.value.param == "max_audio_prompt_seconds"


def test_prompt_frames_are_counted_as_dias_processor_makes_them(dia):
    for samples in (512, 513, 44100):
        inputs = dia.processor(
            text=["[S1] hi"], audio=[np.zeros(samples, np.float32)], padding="longest", return_tensors="pt"
        )
        new_audio_starts = dia.processor.get_audio_prompt_len(inputs["decoder_attention_mask"])
        assert new_audio_starts == 1 + frames_of(samples, 512)  # the start frame, then the prompt's
    assert dia.max_frames == 3072


async def test_the_synth_refuses_what_does_not_fit_and_lowers_a_default_to_fit(synth):
    # max_new_tokens alone beyond the positions (SYNTH_MAX_NEW_TOKENS allows 4096).
    error = await error_of(synth.Synthesize(request(max_new_tokens=3073)))
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "max_new_tokens")

    # A 35 s prompt leaves 40 frames.
    seconds = (3072 - 40) * 512 / 44100
    wav = noise_wav(seconds)
    prompt = (wav, "[S1] A long prompt.")
    assert frames_of(audio.read_prompt(wav, 120).size, 512) == 3072 - 40
    error = await error_of(synth.Synthesize(request(prompt=prompt, max_new_tokens=41)))
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "max_new_tokens")
    assert "at most 40" in error.message
    lowered = request(prompt=prompt, max_new_tokens=300)
    lowered.synthesis.settings.lower_max_new_tokens_to_fit = True
    assert (await synth.Synthesize(lowered)).generated_frames == 40
    unset = request(prompt=prompt)
    unset.synthesis.settings.ClearField("max_new_tokens")
    assert (await synth.Synthesize(unset)).generated_frames == 40


# --- the codec's sampling rate ---------------------------------------------------------------


def test_a_codec_that_is_not_at_44_1_khz_is_refused_at_load(tiny_model_dir, tmp_path):
    codec = tmp_path / "dac-24khz"
    shutil.copytree(tiny_model_dir / "dac", codec)
    config = json.loads((codec / "config.json").read_text())
    assert config["sampling_rate"] == 44100  # what the tiny model writes, as Dia's real codec
    (codec / "config.json").write_text(json.dumps({**config, "sampling_rate": 24000}))
    with pytest.raises(ModelLoadError, match="at 24000 Hz; Dia needs 512 at 44100 Hz"):
        model.load(str(tiny_model_dir / "dia"), str(codec), "tiny", "cpu", threads=1)
