"""The output processor: what a row's codes become for its caller.

* a row that ended: its delays undone and its new audio cut out (from the
  end of its prompt to its end marker), decoded by the codec — in the
  engine's codec thread, beside the next step (core.py);
* a streamed row: its frames handed to its ``on_frames`` after every step,
  and, on the event loop's side, an :class:`AudioStream` that turns them
  into chunks of audio (streaming.py) at the request's speed (tempo.py); a
  streamed row is never decoded again whole;
* a whole request's audio at its speed_factor, through the same tempo filter
  streams use.

It also counts what was made: seconds of audio, real-time factor.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import prometheus_client
import torch

from runtime.errors import ApiError
from services.synth.engine.model import LoadedDia
from services.synth.engine.request import Generated, SynthesisInput, generation_failed
from services.synth.engine.streaming import Chunk, StreamingDecoder, StreamRestarted, stream_cut
from services.synth.engine.tempo import StreamingTempo, to_int16
from services.synth.params import FRAMES_WITHOUT_AUDIO

log = logging.getLogger("synth.output")

AUDIO_SECONDS = prometheus_client.Counter("synth_audio_seconds_generated", "Seconds of audio generated.")
REAL_TIME_FACTOR = prometheus_client.Histogram(
    "synth_real_time_factor",
    "Per request: seconds from joining the batch to its end, over the seconds of audio it made (below 1: faster than real time).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
)


class OutputProcessor:
    def __init__(self, dia: LoadedDia) -> None:
        self.processor = dia.processor
        self.codec = dia.processor.audio_tokenizer
        self.delay_pattern = dia.delay_pattern
        self.channels = dia.num_channels
        self.eos = dia.special_tokens["eos_token_id"]
        self.pad = dia.special_tokens["pad_token_id"]
        self.frames_per_second = dia.sample_rate / dia.samples_per_frame

    # --- rows that ended ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def row_codes(self, sequence: torch.Tensor, start: int) -> torch.Tensor:
        """(frames, codebooks) on the CPU: a row's (frames, codebooks) delayed sequence cut to its new
        audio, from `start` to its end marker, delays undone. Cheap: no codec.

        What DiaProcessor.batch_decode does before its codec, one row at a time, allowing a row
        with no audio frames (which the codec cannot decode).
        """
        row = sequence[None]
        # Frames after the end marker are padding.
        end = row.shape[1] - int((row[0, :, 0] == self.pad).sum()) - 1
        indices = self.processor.build_indices(
            bsz=1, seq_len=row.shape[1], num_channels=self.channels, delay_pattern=self.delay_pattern, revert=True
        )
        undelayed = self.processor.apply_audio_delay(row, pad_token_id=-1, bos_token_id=-1, precomputed_idx=indices)
        return undelayed[0, start:end].cpu()

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        """Dia's codec on (frames, codebooks) undelayed codes: float32 samples (none for no frames)."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        decoded = self.codec.decode(audio_codes=codes.T[None].to(self.codec.device)).audio_values
        return decoded.float().cpu().numpy().reshape(-1)

    def decoded(self, sequence: torch.Tensor, start: int, joined_at: float | None = None) -> Generated:
        """A row that ended, decoded to audio (the codec: blocks; the engine runs it in its codec thread)."""
        codes = self.row_codes(sequence, start)
        generated = Generated(self.decode_codes(codes), codes.shape[0] + FRAMES_WITHOUT_AUDIO, codes)
        self._count(generated, joined_at)
        return generated

    def streamed(self, sequence: torch.Tensor, start: int, joined_at: float | None = None) -> Generated:
        """A streamed row that ended: its audio went out chunk by chunk, so only its codes and frame
        count, for the stream's last message; no codec."""
        codes = self.row_codes(sequence, start)
        generated = Generated(None, codes.shape[0] + FRAMES_WITHOUT_AUDIO, codes)
        self._count(generated, joined_at)
        return generated

    def _count(self, generated: Generated, joined_at: float | None) -> None:
        audio_seconds = (generated.generated_frames - FRAMES_WITHOUT_AUDIO) / self.frames_per_second
        AUDIO_SECONDS.inc(max(audio_seconds, 0.0))
        if audio_seconds > 0 and joined_at is not None:
            REAL_TIME_FACTOR.observe((time.monotonic() - joined_at) / audio_seconds)

    # --- streams -----------------------------------------------------------------------------------------

    def hand_frames(self, request: SynthesisInput, codes: torch.Tensor, start: int) -> ApiError | None:
        """A streamed request's frames so far to its on_frames; the error it then fails with, if that raised."""
        if request.on_frames is None:
            return None
        try:
            request.on_frames(codes, start)
        except Exception as error:  # noqa: BLE001 - its stream's fault: the row fails alone
            log.error("a streamed row's frames could not be handed on", exc_info=error)
            if isinstance(error, StreamRestarted):  # a retry, after part of the first take was sent
                return stream_cut()
            return error if isinstance(error, ApiError) else generation_failed("streaming this request's audio failed")
        return None

    def stream(self, speed_factor: float, first_chunk_frames: int, chunk_frames: int, context_frames: int) -> AudioStream:
        """A new stream's audio: chunks of `chunk_frames` frames (`first_chunk_frames` first) decoded with
        `context_frames` on each side, at `speed_factor`."""
        decoder = StreamingDecoder(self.delay_pattern, self.eos, first_chunk_frames, chunk_frames, context_frames)
        return AudioStream(decoder, StreamingTempo(speed_factor), self.decode_codes)

    # --- tempo -------------------------------------------------------------------------------------------

    @staticmethod
    def at_speed(samples: np.ndarray, speed_factor: float) -> np.ndarray:
        """A whole request's float samples as 16-bit at its speed_factor, through the same tempo filter
        streams use (the transcode service's atempo). Blocks."""
        pcm = to_int16(samples)
        if speed_factor == 1.0:
            return pcm
        tempo = StreamingTempo(speed_factor)
        return np.concatenate([tempo.push(pcm), tempo.finish()])


class AudioStream:
    """One streamed request's audio: delayed frames in, chunks of 16-bit PCM at its speed out.

    chunks() is cheap (it only undoes the delays); render() runs the codec and the
    tempo filter, so the caller runs it off the event loop, one chunk at a time.
    """

    def __init__(self, decoder: StreamingDecoder, tempo: StreamingTempo, decode) -> None:
        self._decoder, self._tempo, self._decode = decoder, tempo, decode

    def chunks(self, frames: torch.Tensor) -> list[Chunk]:
        """The chunks the next delayed frames complete."""
        return self._decoder.push(frames)

    def last_chunks(self) -> list[Chunk]:
        """The rest, once generation has ended."""
        return self._decoder.finish()

    def render(self, chunk: Chunk) -> np.ndarray:
        """A chunk's samples, decoded, at the stream's speed, as little-endian 16-bit."""
        return self._tempo.push(to_int16(chunk.samples(self._decode))).astype("<i2")

    def tail(self) -> np.ndarray:
        """What the tempo filter still holds, once every chunk was rendered."""
        return self._tempo.finish().astype("<i2")
