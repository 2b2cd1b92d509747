"""Dia through transformers: loading, and generating a batch of requests.

Everything here blocks; the service calls it from its one generation thread,
which owns the model (see batching.py).
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np
import torch
import transformers
from transformers import (
    DacModel,
    DiaFeatureExtractor,
    DiaForConditionalGeneration,
    DiaProcessor,
    DiaTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import (
    DiaClassifierFreeGuidanceLogitsProcessor,
    DiaEOSChannelFilterLogitsProcessor,
    DiaEOSDelayPatternLogitsProcessor,
)

from runtime.errors import ApiError
from services.synth import tiny_models
from services.synth.audio import SAMPLE_RATE
from services.synth.config import HUB_DIA_MODEL, TINY_MODEL_NAME
from services.synth.params import FRAMES_WITHOUT_AUDIO, GenerationParams
from services.synth.sampling import GuidanceAmongAllowed, PerRowSampler, StopWhen

log = logging.getLogger("synth.engine")

# Dia's codec turns one frame of codes into this many samples (DAC hop length).
SAMPLES_PER_FRAME = 512
# The logits processors of transformers' Dia that make its output valid (guidance, end rules).
DIA_OWN_PROCESSORS = (
    DiaClassifierFreeGuidanceLogitsProcessor,
    DiaEOSChannelFilterLogitsProcessor,
    DiaEOSDelayPatternLogitsProcessor,
)


class ModelLoadError(Exception):
    """The model could not be loaded; the message says why and what to do."""


class GenerationStopped(Exception):
    """A generation ended early because should_stop() said so."""


class _ServedDia(DiaForConditionalGeneration):
    """Dia whose `generate` honours the logits processors it is given.

    transformers' Dia builds its own processor list and drops the caller's
    (it passes only its own to the base class). We append the caller's after
    Dia's, which is where the base class would put them: after guidance and
    after Dia's end-marker rules, so our sampler sees their final scores.
    """

    def _get_logits_processor(self, generation_config, *args, logits_processor=None, **kwargs):
        processors = super()._get_logits_processor(generation_config, *args, logits_processor=None, **kwargs)
        # Only Dia's own rules stay: anything else (a TemperatureLogitsWarper Dia adds for a
        # temperature a checkpoint's generation_config.json sets, a repetition penalty...) would
        # shape sampling beside the request's parameters, which our sampler alone applies.
        processors = LogitsProcessorList(p for p in processors if isinstance(p, DIA_OWN_PROCESSORS))
        # Guidance keeps its top-k among the tokens the end rules allow (see GuidanceAmongAllowed).
        (rules,) = [p for p in processors if isinstance(p, DiaEOSChannelFilterLogitsProcessor)]
        for index, processor in enumerate(processors):
            if type(processor) is DiaClassifierFreeGuidanceLogitsProcessor and processor.guidance_top_k is not None:
                processors[index] = GuidanceAmongAllowed(
                    processor.guidance_scale, processor.guidance_top_k, rules.num_channels, rules.eos_id
                )
        processors.extend(logits_processor or [])
        return processors


@dataclass(frozen=True)
class SynthesisInput:
    text: str  # prompt transcript (if any) followed by the script, sanitized
    prompt: np.ndarray | None  # 44.1 kHz float32 samples of the voice-cloning prompt
    params: GenerationParams
    seed: int  # the seed actually used (chosen at random when the caller gave none)
    # Streaming hook (see streaming.py), called in the generation thread at every decoder step with
    # this row's codes so far (frames × codebooks, delayed, prompt included) and the frame where its
    # new audio starts. Any engine that serves streams must offer it. None: not streamed.
    on_frames: Callable[[torch.Tensor, int], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Generated:
    # float32, 44.1 kHz, the new speech only. None for a streamed request from the scheduler: its
    # audio went out in chunks as it was generated (streaming.py), so it is not decoded again whole.
    samples: np.ndarray | None
    generated_frames: int  # frames generated, end marker and delay tail included
    codes: torch.Tensor  # (frames, codebooks): the audio codes the samples decode from


def no_token_left() -> ApiError:
    return ApiError(
        grpc.StatusCode.INTERNAL,
        "GENERATION_FAILED",
        "the model left no audio token to sample for this request (its scores were all ruled out or not numbers)",
    )


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


class DiaEngine:
    def __init__(self, model: DiaForConditionalGeneration, processor: DiaProcessor, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = model.device
        decoder = model.config.decoder_config
        self.num_channels = decoder.num_channels
        self.special_tokens = dict(
            bos_token_id=decoder.bos_token_id,
            eos_token_id=decoder.eos_token_id,
            pad_token_id=decoder.pad_token_id,
        )
        # Dia's text encoder is trained on at most this many byte tokens.
        self.max_text_tokens = model.config.encoder_config.max_position_embeddings
        # Its decoder has this many positions (3072): prompt frames plus new frames (see params.fit_positions).
        self.max_frames = decoder.max_position_embeddings
        # What its codec makes of a frame (load() refuses any but 512 samples at 44.1 kHz).
        codec = processor.audio_tokenizer.config
        self.sample_rate = codec.sampling_rate
        self.samples_per_frame = codec.hop_length
        # transformers fills every generation setting we leave unset from the checkpoint's
        # generation_config.json, and Dia's published one sets do_sample, temperature (about 1.2),
        # top_k and top_p: Dia would then scale our temperature by its own. Only the token ids are kept.
        model.generation_config = GenerationConfig(
            decoder_start_token_id=model.generation_config.decoder_start_token_id, **self.special_tokens
        )

    @classmethod
    def load(
        cls, dia: str, dac: str, model_id: str, device: str = "auto", threads: int = 2, dtype: str = "auto"
    ) -> "DiaEngine":
        """Load Dia and its codec from hub ids or local folders (see resolve_model)."""
        _quiet_transformers()
        torch.set_num_threads(threads)
        where, dtype = choose_device(device, dtype)
        try:
            model = _ServedDia.from_pretrained(dia, dtype=dtype).to(where).eval()
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
        return cls(model, processor, model_id)

    def count_text_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def generate(
        self, batch: list[SynthesisInput], should_stop: Callable[[], bool] = lambda: False
    ) -> list[Generated | ApiError]:
        """Generate every request of `batch` in one `generate` call.

        The requests must share `params.batch_key()` and either all have a
        prompt or none. Rows are padded by Dia's processor (text on the right,
        prompt codes on the left) and each row is cut back to its own audio.
        A request the sampler could not sample for gets an error in its place;
        the others their audio.
        """
        params = batch[0].params
        with_prompt = batch[0].prompt is not None
        inputs = self.processor(
            text=[item.text for item in batch],
            audio=[item.prompt for item in batch] if with_prompt else None,
            padding="longest",  # (True would warn that the tokenizer's max_length is unused)
            return_tensors="pt",
        ).to(self.device)
        # The frame where new audio starts: the same for every row, as prompts are left-padded.
        start = self.processor.get_audio_prompt_len(inputs["decoder_attention_mask"])

        generators = [torch.Generator(device=self.device).manual_seed(item.seed) for item in batch]
        sampler = PerRowSampler(
            generators, self.num_channels, params.temperature, params.cfg_filter_top_k, params.top_p
        )
        config = GenerationConfig(
            do_sample=False,  # the sampler draws; see sampling.py
            guidance_scale=params.cfg_scale,
            top_k=params.cfg_filter_top_k,  # Dia's guidance keeps this many candidates
            max_new_tokens=params.max_new_tokens,
            use_cache=True,
            **self.special_tokens,
        )
        output = self.model.generate(
            **inputs,
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([StopWhen(should_stop, self._frames_hook(batch, start))]),
        )
        if should_stop():
            raise GenerationStopped  # cut short: rows lack their end, and nobody waits for them
        return [
            no_token_left() if row in sampler.failed else self._decode_row(output[row : row + 1], start)
            for row in range(len(batch))
        ]

    def _frames_hook(self, batch: list[SynthesisInput], start: int) -> Callable[[torch.Tensor], None] | None:
        """Each streamed row's codes so far, handed to its on_frames at every step."""
        if not any(item.on_frames for item in batch):
            return None

        def each_row(input_ids: torch.Tensor) -> None:  # (rows × codebooks, frames so far)
            rows = input_ids.reshape(len(batch), self.num_channels, -1)
            for item, row in zip(batch, rows):
                if item.on_frames is not None:
                    item.on_frames(row.T, start)

        return each_row

    @torch.inference_mode()
    def _decode_row(self, row: torch.Tensor, start: int) -> Generated:
        """One request's new audio: from `start` to its end marker, delays undone, decoded.

        This is what DiaProcessor.batch_decode does, one row at a time (its
        codec call is unbatched anyway), keeping the codes and allowing a row
        with no audio frames, which the codec cannot decode.
        """
        codes = self.row_codes(row, start)
        return Generated(
            samples=self.decode_codes(codes), generated_frames=codes.shape[0] + FRAMES_WITHOUT_AUDIO, codes=codes
        )

    @torch.inference_mode()
    def row_codes(self, row: torch.Tensor, start: int) -> torch.Tensor:
        """(frames, codebooks) on the CPU: a (1, frames, codebooks) delayed row's new audio codes,
        from `start` to its end marker, delays undone. Cheap: no codec."""
        pad = self.special_tokens["pad_token_id"]
        # Frames after the end marker are padding (rows of a batch end at different times).
        end = row.shape[1] - int((row[0, :, 0] == pad).sum()) - 1
        indices = self.processor.build_indices(
            bsz=1,
            seq_len=row.shape[1],
            num_channels=self.num_channels,
            delay_pattern=self.model.config.delay_pattern,
            revert=True,
        )
        undelayed = self.processor.apply_audio_delay(row, pad_token_id=-1, bos_token_id=-1, precomputed_idx=indices)
        return undelayed[0, start:end].cpu()

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        """Dia's codec on (frames, codebooks) undelayed codes: float32 samples (none for no frames)."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        codec = self.processor.audio_tokenizer
        decoded = codec.decode(audio_codes=codes.T[None].to(codec.device)).audio_values
        return decoded.float().cpu().numpy().reshape(-1)


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
