"""What a request is turned into before it joins a lane (a :class:`Prepared` row), and the voice-prompt cache.

A voice prompt's codec encoding (DAC, the slow part of preparing a request)
depends only on its audio, so it is cached: a prompt made of the caller's
voice samples (voices.py) by their identity, version and cut, with the
transcript cut to match, and a prompt sent as audio by its SHA-256. The same
voices, cloned again and again, cost the encoder once. This is the one cache
of prompt codes: an LRU bounded in bytes (SYNTH_PROMPT_CACHE_BYTES); its hits
and misses are metrics. Codes sent as a prompt (a long script's continuation)
are used as they are.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Hashable

import numpy as np
import prometheus_client
import torch

from runtime.caches import ByteBudgetCache
from services.synth.engine.request import RowSettings

CACHE_HITS = prometheus_client.Counter("synth_prompt_cache_hits", "Voice prompts whose codec encoding was cached.")
CACHE_MISSES = prometheus_client.Counter("synth_prompt_cache_misses", "Voice prompts encoded by the codec.")
CACHE_BYTES = prometheus_client.Gauge("synth_prompt_cache_bytes", "Bytes of codec codes the prompt cache holds.")


@dataclass(frozen=True)
class CachedPrompt:
    codes: torch.Tensor  # (frames, codebooks) int16
    transcript: str  # a voices' prompt's tagged transcript as cut ("" for one sent as audio: its caller's)


class PromptCache(ByteBudgetCache[Hashable, CachedPrompt]):
    """Codec codes of voice prompts (see the module's docstring); least recently used dropped past `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            max_bytes, lambda cached: cached.codes.numel() * cached.codes.element_size() + len(cached.transcript)
        )

    def get(self, key: Hashable) -> CachedPrompt | None:
        cached = super().get(key)
        (CACHE_MISSES if cached is None else CACHE_HITS).inc()
        return cached

    def put(self, key: Hashable, cached: CachedPrompt) -> None:
        super().put(key, cached)
        CACHE_BYTES.set(self.bytes)


@dataclass(eq=False)
class Prepared:
    """One request ready to join: its text tokens and its delayed decoder prompt."""

    text_ids: torch.Tensor  # (S,) byte tokens
    delayed: torch.Tensor  # (T, C): bos and prompt codes with the delays applied; pad where free
    prefill_frames: int  # L: frames fed before the first generated one (bos + prompt frames)
    settings: RowSettings
    tag: object = None  # the caller's handle, returned with the result


def prompt_key(samples: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).digest()


class Preparer:
    """Turns (text, prompt samples, settings) into a :class:`Prepared` row, as Dia's processor would."""

    def __init__(self, processor, delay_pattern: list[int], special_tokens: dict, cache: PromptCache | None) -> None:
        self.processor = processor
        self.delay_pattern = delay_pattern
        self.bos = special_tokens["bos_token_id"]
        self.pad = special_tokens["pad_token_id"]
        self.cache = cache

    def prompt_codes(self, samples: np.ndarray, key: Hashable | None = None, transcript: str = "") -> torch.Tensor:
        """(frames, codebooks) codec codes of a 44.1 kHz prompt. Without a `key` (a prompt sent as audio) it is
        looked up by its content, and kept by it; with one (a voices' prompt its caller found missing) it is
        encoded and kept by that key, with its `transcript`."""
        if key is None and self.cache is not None:
            key = prompt_key(samples)
            if (cached := self.cache.get(key)) is not None:
                return cached.codes
        codec = self.processor.audio_tokenizer
        hop = self.processor.feature_extractor.hop_length
        # As DiaProcessor: the samples padded to a whole number of frames, encoded alone.
        length = math.ceil(len(samples) / hop) * hop
        audio = torch.zeros(length, dtype=torch.float32)
        audio[: len(samples)] = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        with torch.inference_mode():
            codes = codec.encode(audio[None, None].to(codec.device)).audio_codes[0].T.cpu()
        codes = codes.to(torch.int16).clone()  # codes are < 1024: a quarter of the memory in the cache
        if self.cache is not None:
            self.cache.put(key, CachedPrompt(codes, transcript))
        return codes

    def prepare(
        self,
        text: str,
        prompt: np.ndarray | None,
        settings: RowSettings,
        tag=None,
        *,
        codes: torch.Tensor | None = None,
        key: Hashable | None = None,
        transcript: str = "",
    ) -> Prepared:
        """A row of `text` after a prompt: `codes` as they are, or the codes of the `prompt` samples (cached by
        `key` with their `transcript`, or by their content); neither, no prompt."""
        text_ids = torch.tensor(self.processor.tokenizer(text)["input_ids"], dtype=torch.long)
        channels = len(self.delay_pattern)
        if codes is not None:
            codes = codes.long()
        elif prompt is not None:
            codes = self.prompt_codes(prompt, key, transcript).long()
        else:
            codes = torch.zeros((0, channels), dtype=torch.long)
        max_delay = max(self.delay_pattern)
        # bos, the prompt codes, then max_delay free frames; delayed as DiaProcessor delays them.
        undelayed = torch.cat(
            [
                torch.full((1, channels), self.bos),
                codes,
                torch.full((max_delay, channels), self.pad),
            ]
        )
        indices = self.processor.build_indices(
            bsz=1, seq_len=len(undelayed), num_channels=channels, delay_pattern=self.delay_pattern
        )
        delayed = self.processor.apply_audio_delay(undelayed[None], self.pad, self.bos, indices)[0]
        return Prepared(text_ids, delayed.long(), prefill_frames=1 + len(codes), settings=settings, tag=tag)
