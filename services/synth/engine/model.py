"""Loading Dia and its codec through transformers, and what the loaded model holds.

Loading blocks; the service runs it in the engine's generation thread, which owns the model.
"""

from __future__ import annotations

import logging
import pathlib

import torch
import transformers
from transformers import DacModel, DiaFeatureExtractor, DiaForConditionalGeneration, DiaProcessor, DiaTokenizer

from services.synth import tiny_models
from services.synth.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from services.synth.config import HUB_DIA_MODEL, TINY_MODEL_NAME

log = logging.getLogger("synth.model")


class ModelLoadError(Exception):
    """The model could not be loaded; the message says why and what to do."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def choose_device(requested: str, dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Where Dia runs and in what precision (SYNTH_DEVICE, SYNTH_DTYPE).

    auto: CUDA in bfloat16 when asked for or present, else the CPU in float32.
    bfloat16 on the CPU is allowed: on CPUs with bfloat16 instructions
    (AVX-512 BF16, AMX) it is several times faster (README, "Synthesis engine");
    float16 is for GPUs only (CPUs have no fast float16 products).
    """
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("SYNTH_DEVICE=cuda but torch sees no CUDA device")
        return torch.device("cuda"), torch.bfloat16 if dtype == "auto" else DTYPES[dtype]
    if dtype == "float16":
        raise ModelLoadError("SYNTH_DTYPE=float16 needs a CUDA device; on the CPU use float32 or bfloat16")
    return torch.device("cpu"), torch.float32 if dtype == "auto" else DTYPES[dtype]


def _quiet_transformers() -> None:
    # Progress bars and per-call notices would flood the service's JSON logs.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class LoadedDia:
    """Dia, its processor (byte tokenizer, delay maths, codec) and the sizes they hold.

    The engine never calls transformers' `generate`, so the checkpoint's
    generation_config.json (the published one sets do_sample, temperature,
    top_k, top_p) is never read: only a request's parameters shape sampling.
    """

    def __init__(self, model: DiaForConditionalGeneration, processor: DiaProcessor, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = model.device
        decoder = model.config.decoder_config
        self.num_channels = decoder.num_channels
        self.delay_pattern = list(model.config.delay_pattern)
        self.special_tokens = dict(
            bos_token_id=decoder.bos_token_id,
            eos_token_id=decoder.eos_token_id,
            pad_token_id=decoder.pad_token_id,
        )
        # Dia's text encoder is trained on at most this many byte tokens.
        self.max_text_tokens = model.config.encoder_config.max_position_embeddings
        # Its decoder has this many positions (3072): prompt frames plus new frames (params.room_for_new_frames).
        self.max_frames = decoder.max_position_embeddings
        # What its codec makes of a frame (load() refuses any but 512 samples at 44.1 kHz).
        codec = processor.audio_tokenizer.config
        self.sample_rate = codec.sampling_rate
        self.samples_per_frame = codec.hop_length

    def count_text_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])


def load(dia: str, dac: str, model_id: str, device: str = "auto", threads: int = 2, dtype: str = "auto") -> LoadedDia:
    """Load Dia and its codec from hub ids or local folders (see resolve_model)."""
    _quiet_transformers()
    torch.set_num_threads(threads)
    where, dtype = choose_device(device, dtype)
    try:
        model = DiaForConditionalGeneration.from_pretrained(dia, dtype=dtype).to(where).eval()
        codec = DacModel.from_pretrained(dac).to(where).eval()  # float32: decoding quality
    except (OSError, ValueError) as error:
        reason = str(error).strip().rstrip(".")
        raise ModelLoadError(
            f"could not load Dia from {dia!r} with codec {dac!r}: {reason}. Without network access "
            f"use DIA_MODEL={TINY_MODEL_NAME} (a random-weight test model) or a local folder"
        ) from None
    if codec.config.hop_length != SAMPLES_PER_FRAME or codec.config.sampling_rate != SAMPLE_RATE:
        raise ModelLoadError(
            f"codec {dac!r} has hop length {codec.config.hop_length} at {codec.config.sampling_rate} Hz; "
            f"Dia needs {SAMPLES_PER_FRAME} at {SAMPLE_RATE} Hz (descript/dac_44khz)"
        )
    # The feature extractor and tokenizer have no weights: Dia's are byte-level
    # and fixed, so they are built here rather than loaded, and the processor's
    # own from_pretrained (which insists on fetching the codec by the name it
    # was saved with) is not needed.
    processor = DiaProcessor(
        DiaFeatureExtractor(sampling_rate=SAMPLE_RATE, hop_length=SAMPLES_PER_FRAME),
        DiaTokenizer(),
        codec,
    )
    log.info("model loaded", extra={"model": model_id, "device": str(where), "dtype": str(dtype)})
    return LoadedDia(model, processor, model_id)


def resolve_model(dia_model: str, dac_model: str, tiny_dir: pathlib.Path) -> tuple[str, str]:
    """The Dia and codec locations DIA_MODEL/DAC_MODEL name; builds the tiny model when it is asked for and missing."""
    dia = dia_model
    if dia_model == TINY_MODEL_NAME:
        dia = str(tiny_models.ensure(tiny_dir) / "dia")
    for name, value in (("DIA_MODEL", dia), ("DAC_MODEL", dac_model)):
        # A hub id is "owner/name"; anything that starts like a path must be a folder.
        if value.startswith(("/", ".")) and not pathlib.Path(value).is_dir():
            raise ModelLoadError(f"{name}={value} is not a folder (nor a hub id such as {HUB_DIA_MODEL})")
    return dia, dac_model
