"""A tiny random-weight Dia and DAC codec for tests and offline development.

`make tiny-models` (``python -m services.synth.tiny_models``) writes them to
``$SYNTH_MODELS_DIR/tiny-random/{dia,dac}``; ``DIA_MODEL=tiny-random`` loads
them (and builds them first when they are missing). They are built from
configs with a fixed seed, so every machine gets the same weights, and no
download is needed. **Their audio is noise**: they exist to exercise the
serving code, not to speak.

Only widths and depths are shrunk. What Dia's processor hard-codes stays as
in the real checkpoints: 9 codebooks (num_channels), the 1028-entry audio
vocabulary with eos/pad/bos 1024/1025/1026, the delay pattern
[0, 8, 9, ..., 15], the decoder's 3072 positions, a 44.1 kHz codec with
hop length 512 (DAC downsampling 2·4·8·8) and 1024-entry codebooks, and
the sampling settings of the published checkpoint's generation_config.json
(which the engine must ignore). Two deliberate departures from plain random
weights are explained in build().
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

SEED = 1234
AUDIO_EOS_TOKEN = 1024
OUTPUT_WEIGHT_STD = 0.5
# Sampling settings as in Dia's published generation_config.json (do_sample, temperature
# about 1.2, top_k 45, top_p 0.95), plus its guidance scale and length.
CHECKPOINT_SAMPLING = dict(do_sample=True, temperature=1.2, top_k=45, top_p=0.95, guidance_scale=3.0, max_length=3072)
# Bumped when what build() writes changes, so that older copies are rebuilt.
VERSION = "2"
VERSION_FILE = "tiny-models-version"


def build(folder: pathlib.Path, replace: bool = True) -> None:
    """Write the tiny Dia to folder/dia and its codec to folder/dac.

    With replace=False an existing folder is left alone (OSError), so that two
    processes building at once (a test session beside `make run`) never
    remove each other's copy while it is being loaded.
    """
    import torch
    import transformers
    from transformers import (
        DacConfig,
        DacModel,
        DiaConfig,
        DiaDecoderConfig,
        DiaEncoderConfig,
        DiaForConditionalGeneration,
        GenerationConfig,
    )

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(SEED)
    encoder = DiaEncoderConfig(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64,
        num_attention_heads=2, num_key_value_heads=2, head_dim=16,
    )
    decoder = DiaDecoderConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        cross_num_attention_heads=2, cross_num_key_value_heads=2, cross_head_dim=16,
        cross_hidden_size=encoder.hidden_size,
    )
    dia = DiaForConditionalGeneration(DiaConfig(encoder_config=encoder, decoder_config=decoder))
    with torch.no_grad():
        # With the usual 0.02 initialisation every token gets about the same
        # logit, so temperature, top-p and top-k would change nothing. Larger
        # output weights give peaked distributions, as a trained model has.
        dia.logits_dense.weight.normal_(std=OUTPUT_WEIGHT_STD)
        # Random weights would end a generation whenever the end marker happens
        # to get the top logit. A zero row keeps its logit at 0, below the best
        # of the other 1023 random logits, so the tiny model always generates
        # exactly max_new_tokens frames: predictable lengths for tests.
        dia.logits_dense.weight[AUDIO_EOS_TOKEN].zero_()
    # The sampling settings Dia's published generation_config.json carries: the engine must
    # not let them shape sampling (only a request's parameters may), so the tiny model has them too.
    dia.generation_config = GenerationConfig(
        bos_token_id=decoder.bos_token_id,
        eos_token_id=decoder.eos_token_id,
        pad_token_id=decoder.pad_token_id,
        decoder_start_token_id=decoder.bos_token_id,
        **CHECKPOINT_SAMPLING,
    )
    # 44.1 kHz, as Dia's real codec (descript/dac_44khz): the engine refuses any other rate.
    codec = DacModel(DacConfig(encoder_hidden_size=4, decoder_hidden_size=32, sampling_rate=44100))

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        dia.save_pretrained(staging / "dia")
        codec.save_pretrained(staging / "dac")
        (staging / VERSION_FILE).write_text(VERSION)
        staging.chmod(0o755)  # mkdtemp makes it private; the models are not secret
        if replace:
            shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)  # atomic: a reader sees no model or a whole one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_built(folder: pathlib.Path) -> bool:
    stamp = folder / VERSION_FILE
    return (
        (folder / "dia" / "model.safetensors").exists()
        and (folder / "dac" / "model.safetensors").exists()
        and stamp.exists()
        and stamp.read_text() == VERSION
    )


def ensure(folder: pathlib.Path) -> pathlib.Path:
    """Build the tiny models into folder unless they are there (and current); returns folder."""
    if not is_built(folder):
        try:
            build(folder, replace=folder.exists())  # an older copy is replaced
        except OSError:
            if not is_built(folder):  # not a rival build that finished first
                raise
    return folder


def main() -> int:
    from services.synth import config

    folder = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else config.tiny_model_dir()
    build(folder)
    print(f"tiny random-weight Dia and DAC written to {folder} (their audio is noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
