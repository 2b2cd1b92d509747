"""The output processor and the loaded model on the tiny Dia: a row cut at its own end marker and
decoded, a row with no audio, text counted as Dia reads it, precision as SYNTH_DTYPE says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.synth.audio import SAMPLES_PER_FRAME
from services.synth.engine.output_processor import OutputProcessor


def delayed_row(codes: torch.Tensor, total_frames: int, dia) -> torch.Tensor:
    """A row's delayed frames for `codes`: bos, the codes with Dia's delays, end markers, padding."""
    bos, eos, pad = (dia.special_tokens[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id"))
    row = torch.full((total_frames, 9), pad)
    for channel, delay in enumerate(dia.delay_pattern):
        row[: 1 + delay, channel] = bos
        row[1 + delay : 1 + delay + len(codes), channel] = codes[:, channel]
        row[1 + delay + len(codes), channel] = eos
    return row


def test_a_row_is_cut_at_its_own_end_marker_and_decoded_to_512_samples_a_frame(dia):
    codes = torch.randint(0, 1024, (20, 9), generator=torch.Generator().manual_seed(0))
    # 1 bos + 20 frames + 16 (end marker and delay tail) = 37; padding after it up to 80.
    result = OutputProcessor(dia).decoded(delayed_row(codes, 80, dia), start=1)
    assert torch.equal(result.codes, codes)
    assert result.generated_frames == 36
    assert result.samples.dtype == np.float32 and result.samples.size == 20 * SAMPLES_PER_FRAME


def test_a_row_with_no_audio_frames_decodes_to_empty_audio(dia):
    result = OutputProcessor(dia).decoded(delayed_row(torch.zeros((0, 9), dtype=torch.long), 40, dia), start=1)
    assert result.samples.size == 0 and result.generated_frames == 16


def test_a_streamed_row_ends_with_its_codes_and_no_samples(dia):
    codes = torch.randint(0, 1024, (20, 9), generator=torch.Generator().manual_seed(1))
    result = OutputProcessor(dia).streamed(delayed_row(codes, 37, dia), start=1)
    assert result.samples is None and result.generated_frames == 36 and torch.equal(result.codes, codes)


def test_text_length_is_counted_in_bytes_as_dia_reads_it(dia):
    assert dia.max_text_tokens == 1024
    assert dia.count_text_tokens("[S1] héllo") == 1 + len(" héllo".encode())


def test_precision_follows_synth_dtype_and_float16_is_refused_on_the_cpu():
    from services.synth.engine.model import ModelLoadError, choose_device

    assert choose_device("cpu") == (torch.device("cpu"), torch.float32)
    assert choose_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ModelLoadError, match="float16 needs a CUDA device"):
        choose_device("cpu", "float16")


def test_dia_in_bfloat16_on_the_cpu_generates_through_the_runner(tiny_model_dir):
    """SYNTH_DTYPE=bfloat16 on a CPU: the weights are bfloat16, the codec float32, and a request comes out whole."""
    from services.synth.engine import model
    from services.synth.engine.prompts import Preparer
    from services.synth.engine.request import RowSettings
    from services.synth.engine.runner import DecodeBatch

    half = model.load(str(tiny_model_dir / "dia"), str(tiny_model_dir / "dac"), "tiny", "cpu", 1, "bfloat16")
    assert half.model.dtype == torch.bfloat16
    assert next(half.processor.audio_tokenizer.parameters()).dtype == torch.float32
    preparer = Preparer(half.processor, half.delay_pattern, half.special_tokens, None)
    batch = DecodeBatch(half.model, max_rows=2)
    rows = [preparer.prepare("[S1] Hello there.", None, RowSettings(3.0, t, 0.95, 45, 40, 7), t) for t in (0.0, 1.0)]
    finished = batch.step(rows)
    while batch.rows:
        finished += batch.step()
    assert sorted(done.tag for done in finished) == [0.0, 1.0]
    output = OutputProcessor(half)
    for done in finished:
        generated = output.decoded(done.sequence, done.prefill_frames)
        assert generated.generated_frames <= 40  # ended at its marker or at max_new_tokens
        assert len(generated.samples) == max(generated.generated_frames - 16, 0) * SAMPLES_PER_FRAME
        assert generated.samples.dtype == np.float32 and np.isfinite(generated.samples).all()
