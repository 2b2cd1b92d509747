"""The engine on the tiny Dia: lengths, batching that changes nothing, prompts cut off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.synth import audio
from services.synth.engine import SAMPLES_PER_FRAME, GenerationStopped, SynthesisInput
from services.synth.params import GenerationParams
from tests.synth.helpers import noise_wav

GREEDY = GenerationParams(3.0, 0.0, 0.95, 45, 60, 1.0, None)
SAMPLED = GenerationParams(3.0, 1.8, 0.95, 45, 60, 1.0, None)
AUDIO_FRAMES = 60 - 16


def prompt(seconds: float) -> np.ndarray:
    return audio.read_prompt(noise_wav(seconds, seed=int(seconds * 10)), max_seconds=10)


def test_a_generation_has_max_new_tokens_frames_and_512_samples_per_audio_frame(engine):
    (result,) = engine.generate([SynthesisInput("[S1] Hello.", None, SAMPLED, 3)])
    assert result.generated_frames == 60
    assert result.codes.shape == (AUDIO_FRAMES, 9)
    assert ((0 <= result.codes) & (result.codes < 1024)).all()  # real codes: no bos/pad/eos left
    assert result.samples.dtype == np.float32 and result.samples.size == AUDIO_FRAMES * SAMPLES_PER_FRAME


def test_rows_of_different_script_lengths_come_out_as_they_would_alone(engine):
    texts = ["[S1] Hi.", "[S1] A much longer line than the first one. [S2] And a reply to it."]
    for params in (GREEDY, SAMPLED):
        batch = [SynthesisInput(text, None, params, seed) for seed, text in enumerate(texts)]
        together = engine.generate(batch)
        for item, batched in zip(batch, together):
            (alone,) = engine.generate([item])
            assert batched.samples.shape == alone.samples.shape
            assert batched.generated_frames == alone.generated_frames
            assert torch.equal(batched.codes, alone.codes)


def test_prompts_of_different_lengths_share_a_batch_and_only_new_audio_comes_back(engine):
    batch = [
        SynthesisInput("[S1] Prompt words. [S1] New words.", prompt(0.4), SAMPLED, 1),
        SynthesisInput("[S1] Longer prompt words here. [S2] New words.", prompt(1.3), SAMPLED, 2),
    ]
    together = engine.generate(batch)
    for item, batched in zip(batch, together):
        assert batched.generated_frames == 60
        assert batched.samples.size == AUDIO_FRAMES * SAMPLES_PER_FRAME  # the prompt is cut off
        (alone,) = engine.generate([item])
        assert torch.equal(batched.codes, alone.codes)


def test_the_prompt_conditions_the_generation(engine):
    text = "[S1] Prompt words. [S1] New words."
    with_prompt = engine.generate([SynthesisInput(text, prompt(0.5), GREEDY, 1)])[0]
    without = engine.generate([SynthesisInput(text, None, GREEDY, 1)])[0]
    assert not torch.equal(with_prompt.codes, without.codes)


def delayed_row(codes: torch.Tensor, total_frames: int, engine) -> torch.Tensor:
    """A generate() output row for `codes`: bos, the codes with Dia's delays, end markers, padding."""
    delays = engine.model.config.delay_pattern
    bos, eos, pad = (engine.special_tokens[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id"))
    row = torch.full((1, total_frames, 9), pad)
    for channel, delay in enumerate(delays):
        row[0, : 1 + delay, channel] = bos
        row[0, 1 + delay : 1 + delay + len(codes), channel] = codes[:, channel]
        row[0, 1 + delay + len(codes), channel] = eos
    return row


def test_a_row_that_ended_early_in_a_batch_is_cut_at_its_own_end_marker(engine):
    codes = torch.randint(0, 1024, (20, 9), generator=torch.Generator().manual_seed(0))
    # 1 bos + 20 frames + 16 (end marker and delay tail) = 37; the batch ran to 80.
    result = engine._decode_row(delayed_row(codes, 80, engine), start=1)
    assert torch.equal(result.codes, codes)
    assert result.generated_frames == 36
    assert result.samples.size == 20 * SAMPLES_PER_FRAME


def test_a_row_with_no_audio_frames_decodes_to_empty_audio(engine):
    result = engine._decode_row(delayed_row(torch.zeros((0, 9), dtype=torch.long), 40, engine), start=1)
    assert result.samples.size == 0 and result.generated_frames == 16


def test_text_length_is_counted_in_bytes_as_dia_reads_it(engine):
    assert engine.max_text_tokens == 1024
    assert engine.count_text_tokens("[S1] héllo") == 1 + len(" héllo".encode())


def test_a_generation_told_to_stop_ends_at_the_next_step(engine):
    long = GenerationParams(3.0, 1.8, 0.95, 45, 2000, 1.0, None)
    steps = []

    def stop_after_five() -> bool:
        steps.append(1)
        return len(steps) >= 5

    with pytest.raises(GenerationStopped):
        engine.generate([SynthesisInput("[S1] Hello.", None, long, 1)], should_stop=stop_after_five)
    assert 5 <= len(steps) <= 6  # asked once per generated frame, and once after


def test_precision_follows_synth_dtype_and_float16_is_refused_on_the_cpu():
    from services.synth.engine import ModelLoadError, choose_device

    assert choose_device("cpu") == (torch.device("cpu"), torch.float32)
    assert choose_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ModelLoadError, match="float16 needs a CUDA device"):
        choose_device("cpu", "float16")


def test_dia_in_bfloat16_on_the_cpu_generates_through_the_decode_loop(tiny_model_dir):
    """SYNTH_DTYPE=bfloat16 on a CPU: the weights are bfloat16, the codec float32, and a request comes out whole."""
    from services.synth.decoder import DecodeBatch, RowSettings
    from services.synth.engine import DiaEngine
    from services.synth.prompts import Preparer

    half = DiaEngine.load(str(tiny_model_dir / "dia"), str(tiny_model_dir / "dac"), "tiny", "cpu", 1, "bfloat16")
    assert half.model.dtype == torch.bfloat16
    assert next(half.processor.audio_tokenizer.parameters()).dtype == torch.float32
    preparer = Preparer(half.processor, half.model.config.delay_pattern, half.special_tokens, None)
    batch = DecodeBatch(half.model, max_rows=2)
    rows = [preparer.prepare("[S1] Hello there.", None, RowSettings(3.0, t, 0.95, 45, 40, 7), t) for t in (0.0, 1.0)]
    finished = batch.step(rows)
    while batch.rows:
        finished += batch.step()
    assert sorted(done.tag for done in finished) == [0.0, 1.0]
    for done in finished:
        generated = half._decode_row(done.sequence[None], done.prefill_frames)
        assert generated.generated_frames <= 40  # ended at its marker or at max_new_tokens
        assert len(generated.samples) == max(generated.generated_frames - 16, 0) * SAMPLES_PER_FRAME
        assert generated.samples.dtype == np.float32 and np.isfinite(generated.samples).all()
