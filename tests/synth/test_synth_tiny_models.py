"""`make tiny-models`: a small, reproducible Dia and codec with the shapes Dia's processor hard-codes."""

from __future__ import annotations

import json
import subprocess
import sys

from safetensors.torch import load_file

from services.synth import tiny_models
from tests.conftest import ROOT


def test_the_make_target_and_a_build_on_first_use_give_the_same_small_weights(tmp_path):
    # The make target runs this module; a folder argument sends it elsewhere than var/models.
    subprocess.run(
        [sys.executable, "-m", "services.synth.tiny_models", str(tmp_path / "made")],
        cwd=ROOT, check=True, capture_output=True,
    )
    tiny_models.ensure(tmp_path / "on-first-use")
    for part in ("dia", "dac"):
        made = load_file(tmp_path / "made" / part / "model.safetensors")
        on_first_use = load_file(tmp_path / "on-first-use" / part / "model.safetensors")
        assert made.keys() == on_first_use.keys()
        assert all(made[key].equal(on_first_use[key]) for key in made)
    size = sum((tmp_path / "made" / part / "model.safetensors").stat().st_size for part in ("dia", "dac"))
    assert size < 5 * 2**20  # tiny: a few megabytes


def test_only_widths_and_depths_differ_from_the_real_checkpoints(tiny_model_dir):
    dia = json.loads((tiny_model_dir / "dia" / "config.json").read_text())
    decoder = dia["decoder_config"]
    assert (decoder["num_channels"], decoder["vocab_size"]) == (9, 1028)
    assert (decoder["eos_token_id"], decoder["pad_token_id"], decoder["bos_token_id"]) == (1024, 1025, 1026)
    assert dia["delay_pattern"] == [0, 8, 9, 10, 11, 12, 13, 14, 15]
    assert dia["encoder_config"]["max_position_embeddings"] == 1024
    assert decoder["hidden_size"] <= 64 and decoder["num_hidden_layers"] <= 2

    dac = json.loads((tiny_model_dir / "dac" / "config.json").read_text())
    assert dac["sampling_rate"] == 44100
    assert dac["downsampling_ratios"] == [2, 4, 8, 8]  # hop length 512
    assert (dac["n_codebooks"], dac["codebook_size"]) == (9, 1024)


def test_a_model_already_there_is_not_rebuilt(tmp_path):
    folder = tiny_models.ensure(tmp_path / "tiny-random")
    weights = folder / "dia" / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert tiny_models.ensure(folder) == folder
    assert weights.stat().st_mtime_ns == built_at
