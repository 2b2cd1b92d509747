"""What the real Dia checkpoint differs in from a bare tiny model, on the tiny one.

* its generation_config.json carries sampling settings (do_sample, temperature
  about 1.2, top_k 45, top_p 0.95) that must not shape our sampling;
* every cfg_filter_top_k of the public range (1 to 100) generates, and one
  request the sampler cannot serve fails alone, never its batch-mates;
* its decoder has 3072 positions, shared by the prompt's frames and the new ones.
"""

from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    DiaClassifierFreeGuidanceLogitsProcessor,
    DiaEOSChannelFilterLogitsProcessor,
    TemperatureLogitsWarper,
)

from runtime.errors import ApiError
from services.synth import audio, tiny_models
from services.synth.engine import DiaEngine, Generated, ModelLoadError, SynthesisInput
from services.synth.params import FRAMES_WITHOUT_AUDIO, GenerationParams, fit_positions, frames_of
from services.synth.sampling import GuidanceAmongAllowed, PerRowSampler
from tests.synth.helpers import error_of, noise_wav, request

CHANNELS = 9
VOCAB = 1028
EOS = 1024
SAMPLED = GenerationParams(3.0, 1.8, 0.95, 45, 40, 1.0, None)


# --- the checkpoint's generation_config.json ---------------------------------------------


def test_the_tiny_model_carries_the_real_checkpoints_sampling_settings(tiny_model_dir):
    saved = json.loads((tiny_model_dir / "dia" / "generation_config.json").read_text())
    assert saved["do_sample"] is True and saved["temperature"] == pytest.approx(1.2)
    assert (saved["top_k"], saved["top_p"]) == (45, 0.95)


@pytest.fixture(scope="module")
def engine_without_sampling_settings(tiny_model_dir, tmp_path_factory):
    """The same tiny Dia, its generation_config.json holding token ids only."""
    folder = tmp_path_factory.mktemp("plain") / "dia"
    shutil.copytree(tiny_model_dir / "dia", folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({k: v for k, v in config.items() if "token_id" in k}))
    return DiaEngine.load(str(folder), str(tiny_model_dir / "dac"), "plain", "cpu", threads=1)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0, 1.8])
def test_the_checkpoints_sampling_settings_change_nothing(engine, engine_without_sampling_settings, temperature):
    params = GenerationParams(3.0, temperature, 0.95, 45, 40, 1.0, None)
    batch = [SynthesisInput("[S1] Hello there, how are you?", None, params, seed) for seed in (5, 6)]
    with_settings = engine.generate(batch)
    without = engine_without_sampling_settings.generate(batch)
    for ours, plain in zip(with_settings, without):
        assert torch.equal(ours.codes, plain.codes)


def test_no_temperature_of_the_checkpoint_reaches_dias_processors(engine):
    config = engine.model.generation_config
    assert config.temperature is None and config.do_sample is None and config.top_p is None
    # Dia adds a TemperatureLogitsWarper for any temperature that is set; the engine keeps Dia's own rules only.
    from transformers import GenerationConfig

    leaky = GenerationConfig(temperature=1.2, repetition_penalty=1.3, guidance_scale=3.0, top_k=45, max_length=40)
    processors = engine.model._get_logits_processor(leaky, input_ids_seq_length=1, device="cpu")
    assert not any(isinstance(p, TemperatureLogitsWarper) for p in processors)
    assert {type(p).__name__ for p in processors} <= {
        "GuidanceAmongAllowed", "DiaEOSChannelFilterLogitsProcessor", "DiaEOSDelayPatternLogitsProcessor"
    }


# --- cfg_filter_top_k: every value generates; a failure fails its own row ------------------


def special_ids_on_top(requests: int) -> torch.Tensor:
    """Conditioned and unconditioned scores whose best guided tokens are ids no channel may emit
    (pad and bos on every channel; the end marker too on all but the first)."""
    cond = torch.randn(requests * CHANNELS, VOCAB, generator=torch.Generator().manual_seed(1))
    cond[:, EOS:] = 50.0
    uncond = torch.zeros_like(cond)
    return torch.cat([cond, uncond])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_guidance_keeps_k_tokens_each_channel_may_emit(k):
    scores = special_ids_on_top(2)
    input_ids = torch.zeros(2 * CHANNELS, 1, dtype=torch.long)
    end_rules = DiaEOSChannelFilterLogitsProcessor(CHANNELS, EOS)
    ours = end_rules(input_ids, GuidanceAmongAllowed(3.0, k, CHANNELS, EOS)(input_ids, scores.clone()))
    assert torch.isfinite(ours).any(dim=-1).all()
    # transformers' guidance keeps the special ids and the end rules then leave channels nothing.
    theirs = end_rules(input_ids, DiaClassifierFreeGuidanceLogitsProcessor(3.0, k)(input_ids, scores.clone()))
    assert not torch.isfinite(theirs).any(dim=-1).all()


@pytest.mark.parametrize("temperature", [0.0, 1.8])
def test_a_request_left_no_token_fails_alone_and_the_others_draw_as_they_would_alone(temperature):
    def sampler(seeds):
        return PerRowSampler([torch.Generator().manual_seed(s) for s in seeds], CHANNELS, temperature, 45, 0.95)

    scores = torch.randn(3 * CHANNELS, VOCAB, generator=torch.Generator().manual_seed(2)) * 3
    broken = scores.clone()
    broken[CHANNELS + 4] = -float("inf")  # request 1, codebook 4: nothing allowed
    broken[CHANNELS + 5, 7] = float("nan")
    batch = sampler([1, 2, 3])
    out = batch(None, broken.clone())
    assert batch.failed == {1}
    assert torch.isfinite(out).any(dim=-1).all()  # nothing left for generate to choke on
    for index, seed in ((0, 1), (2, 3)):
        rows = slice(index * CHANNELS, (index + 1) * CHANNELS)
        alone = sampler([seed])(None, scores[rows].clone())
        assert torch.equal(out[rows].argmax(-1), alone.argmax(-1))


def test_every_cfg_filter_top_k_of_the_public_range_generates(engine):
    for k in range(1, 101):
        params = GenerationParams(3.0, 1.8, 0.95, k, FRAMES_WITHOUT_AUDIO + 1, 1.0, None)
        (result,) = engine.generate([SynthesisInput("[S1] Hello there.", None, params, k)])
        assert isinstance(result, Generated), (k, result)


def test_a_row_the_model_gives_no_usable_scores_fails_alone_in_its_batch(engine):
    # NaN logits for the second request only (its conditioned and unconditioned rows).
    def poison(module, inputs, output):
        rows = output.shape[0] // 2
        output[1] = float("nan")
        output[rows + 1] = float("nan")
        return output

    batch = [SynthesisInput(f"[S1] Hello number {n}.", None, SAMPLED, seed) for n, seed in enumerate((4, 5, 6))]
    alone = [engine.generate([item])[0] for item in batch]
    hook = engine.model.logits_dense.register_forward_hook(poison)
    try:
        results = engine.generate(batch)
    finally:
        hook.remove()
    assert isinstance(results[1], ApiError) and results[1].reason == "GENERATION_FAILED"
    assert results[0].codes.shape == alone[0].codes.shape and results[2].codes.shape == alone[2].codes.shape


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


def test_prompt_frames_are_counted_as_dias_processor_makes_them(engine):
    for samples in (512, 513, 44100):
        inputs = engine.processor(
            text=["[S1] hi"], audio=[np.zeros(samples, np.float32)], padding="longest", return_tensors="pt"
        )
        new_audio_starts = engine.processor.get_audio_prompt_len(inputs["decoder_attention_mask"])
        assert new_audio_starts == 1 + frames_of(samples, 512)  # the start frame, then the prompt's
    assert engine.max_frames == 3072


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
        DiaEngine.load(str(tiny_model_dir / "dia"), str(codec), "tiny", "cpu", threads=1)
