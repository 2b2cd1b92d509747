"""Streamed synthesis: audio out while Dia is still generating, chunk boundaries inaudible.

Dia emits one *delayed* frame of codes per decoder step: codebook c of audio
frame t is generated at step t + delay[c] (delay pattern [0, 8, 9, ..., 15]).
So audio frame t is complete 15 steps after it starts; :class:`StreamingDecoder`
undoes the delay as frames become complete and decodes them with Dia's codec.

The codec (DAC) is convolutional, not causal: a sample depends on a few
frames on either side. Decoding pieces on their own would click at every
boundary. Each chunk is therefore decoded with `context_frames` frames of
codes on each side of it, and only the samples of its own frames are kept:
the right context is waited for (it costs that many frames of latency), the
left context is decoded again. With enough context (the codec's receptive
field, a handful of frames) the joined chunks equal the one-shot decode of the
whole up to float rounding; tests/synth/test_synth_streaming.py measures it.

The first chunk leaves once `first_chunk_frames` audio frames are complete
(SYNTH_STREAM_FIRST_CHUNK_FRAMES, ~0.5 s); later chunks every
`chunk_frames` (SYNTH_STREAM_CHUNK_FRAMES).

Where the frames come from: the output processor calls a request's
``SynthesisInput.on_frames(codes, audio_start)`` after every step, in the
generation thread, with that row's codes so far (frames × codebooks, delayed,
prompt included; new audio starts at frame ``audio_start``). That callback is
the whole interface between generation and streaming. :class:`FrameFeed` is
such a callback: it copies the new frames and hands them to the event loop,
where the output processor's AudioStream turns them into chunks of audio.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Sequence

import grpc
import numpy as np
import torch

from runtime.errors import ApiError
from services.synth.audio import SAMPLES_PER_FRAME


@dataclass(frozen=True)
class Chunk:
    """Frames to decode and which of the decoded samples to keep."""

    codes: torch.Tensor  # (frames, codebooks), undelayed, context included
    skip_samples: int  # the left context's samples
    keep_samples: int  # the chunk's own samples

    def samples(self, decode: Callable[[torch.Tensor], np.ndarray]) -> np.ndarray:
        decoded = decode(self.codes)
        return decoded[self.skip_samples : self.skip_samples + self.keep_samples]


class StreamingDecoder:
    """Turns delayed frames, pushed as they are generated, into chunks of complete audio frames."""

    def __init__(
        self,
        delay_pattern: Sequence[int],
        eos_id: int,
        first_chunk_frames: int,
        chunk_frames: int,
        context_frames: int,
    ) -> None:
        self.delays = list(delay_pattern)
        self.max_delay = max(self.delays)
        self.eos_id = eos_id
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self._raw = torch.empty((0, len(self.delays)), dtype=torch.long)
        self._length = 0  # raw frames received
        # Frames count from the first frame of new audio (the prompt's are never pushed).
        self.start = 0
        self.end: int | None = None  # the end marker's frame: audio is [start, end)
        self._done = 0  # frames before this one were handed out
        self.chunks = 0

    def push(self, frames: torch.Tensor) -> list[Chunk]:
        """Add the next raw frames ((n, codebooks), delayed, in order, the first at the audio's
        start); the chunks now ready."""
        if self.end is not None:  # only the delay tail of the audio is still wanted
            frames = frames[: max(0, self.end + self.max_delay - self._length)]
        if frames.shape[0] == 0:
            return []
        self._append(frames)
        if self.end is None:
            first = max(self._length - frames.shape[0], self.start)
            markers = (self._raw[first : self._length, 0] == self.eos_id).nonzero()
            if markers.numel():
                self.end = first + int(markers[0])
        return self._ready(final=False)

    def finish(self) -> list[Chunk]:
        """The rest, once generation has ended (without an end marker: every complete frame)."""
        if self.end is None:
            self.end = max(self.start, self._length - self.max_delay)
        return self._ready(final=True)

    def _append(self, frames: torch.Tensor) -> None:
        needed = self._length + frames.shape[0]
        if needed > self._raw.shape[0]:
            grown = torch.empty((max(needed, 2 * self._raw.shape[0], 256), self._raw.shape[1]), dtype=torch.long)
            grown[: self._length] = self._raw[: self._length]
            self._raw = grown
        self._raw[self._length : needed] = frames
        self._length = needed

    def _complete(self) -> int:
        """Frames before this one have every codebook."""
        complete = self._length - self.max_delay
        return min(complete, self.end) if self.end is not None else complete

    def _undelayed(self, first: int, stop: int) -> torch.Tensor:
        return torch.stack(
            [self._raw[first + delay : stop + delay, channel] for channel, delay in enumerate(self.delays)], dim=1
        )

    def _ready(self, final: bool) -> list[Chunk]:
        complete = self._complete()
        if final:
            until = complete
        else:
            until = complete - self.context_frames  # right context must be there
            wanted = self.first_chunk_frames if self._done == self.start else self.chunk_frames
            if until - self._done < wanted:
                return []
        if until <= self._done:
            return []
        first = max(self.start, self._done - self.context_frames)
        stop = min(complete, until + self.context_frames)
        chunk = Chunk(
            codes=self._undelayed(first, stop),
            skip_samples=(self._done - first) * SAMPLES_PER_FRAME,
            keep_samples=(until - self._done) * SAMPLES_PER_FRAME,
        )
        self._done = until
        self.chunks += 1
        return [chunk]


class FrameFeed:
    """A request's ``on_frames`` callback: new frames from the generation thread to an asyncio queue.

    Called once per decoder step with the row's codes so far; copies only the
    frames it has not sent yet (to the CPU), so a step costs one small copy.

    A request whose step failed runs again from its start, alone (the
    scheduler's retries), so the codes may start over. While no audio has
    reached the caller (`audio_sent`, set by whoever sends the chunks) that
    is harmless: the feed puts
    :data:`STARTED_OVER` in the queue, and the consumer drops what it decoded
    of the first take and follows the new one. Once audio was sent, the new
    take's frames would not continue it, so the feed refuses the restart
    (:class:`StreamRestarted`: the request fails alone) rather than splice two
    different takes. A consumer that sends a chunk of the first take after the
    feed queued the marker checks the same when it reaches it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[torch.Tensor | object] = asyncio.Queue()
        self.audio_sent = False  # set on the event loop once a chunk went to the caller
        self._sent: int | None = None
        self._seen = 0  # frames in the previous call's codes: one more at every step of one generation

    def __call__(self, codes: torch.Tensor, audio_start: int) -> None:
        restarted = codes.shape[0] <= self._seen
        self._seen = codes.shape[0]
        if restarted:
            if self._sent is not None and self._sent > audio_start:  # frames of the first take were queued
                if self.audio_sent:
                    raise StreamRestarted("the generation started over after part of its audio was streamed")
                self.loop.call_soon_threadsafe(self.queue.put_nowait, STARTED_OVER)
            self._sent = None
        if self._sent is None:
            self._sent = audio_start  # frames before it are the prompt's
        if codes.shape[0] <= self._sent:
            return
        new = codes[self._sent :].to("cpu", copy=True)
        self._sent = codes.shape[0]
        self.loop.call_soon_threadsafe(self.queue.put_nowait, new)


# In a FrameFeed's queue: the generation started over; the frames before this belong to a take that was dropped.
STARTED_OVER = object()


class StreamRestarted(RuntimeError):
    """A streamed request's generation started over once its first audio had been sent."""


def stream_cut() -> ApiError:
    return ApiError(
        grpc.StatusCode.INTERNAL,
        "GENERATION_FAILED",
        "the generation failed after part of its audio was streamed, and cannot go on where it stopped; try again",
    )
