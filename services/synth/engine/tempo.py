"""speed_factor as audio flows: FFmpeg's atempo (WSOLA, the pitch stays), fed piece by piece.

The same filter, settings and sample format as the transcode service's
ChangeSpeed, kept open across pieces, so a stream gets the tempo change
without a round trip and the result is what ChangeSpeed gives for the whole
(tests/synth/test_synth_streaming.py compares them).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from services.synth.audio import SAMPLE_RATE


def to_int16(samples: np.ndarray) -> np.ndarray:
    """As audio.to_wav writes them: clipped to [-1, 1], scaled by 32767, rounded."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


class StreamingTempo:
    """Feed 16-bit samples with push(); finish() flushes and makes the total exactly len/factor."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._received = 0
        self._sent = 0
        self._graph: av.filter.Graph | None = None
        if factor != 1.0:
            graph = av.filter.Graph()
            source = graph.add_abuffer(
                format="s16", sample_rate=SAMPLE_RATE, layout="mono", time_base=Fraction(1, SAMPLE_RATE)
            )
            tempo = graph.add("atempo", tempo=repr(float(factor)))
            pinned = graph.add("aformat", sample_fmts="s16", channel_layouts="mono", sample_rates=str(SAMPLE_RATE))
            graph.link_nodes(source, tempo, pinned, graph.add("abuffersink")).configure()
            self._graph = graph

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The stretched samples ready so far (int16), for the next int16 `samples`."""
        if self._graph is None:
            self._received += samples.size
            self._sent += samples.size
            return samples
        if samples.size == 0:
            return samples
        frame = av.AudioFrame.from_ndarray(samples[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = Fraction(1, SAMPLE_RATE)
        frame.pts = self._received
        self._received += samples.size
        self._graph.push(frame)
        out = self._pull()  # atempo lags its input, so this never runs past the final length
        self._sent += out.size
        return out

    def finish(self) -> np.ndarray:
        """What the filter still holds, cut or padded so that the whole is round(received / factor)."""
        if self._graph is None:
            return np.zeros(0, dtype=np.int16)
        if self._received == 0:
            return np.zeros(0, dtype=np.int16)
        self._graph.push(None)  # end of stream: atempo flushes
        # As ChangeSpeed: atempo's output runs a few ms off len/factor; cut or pad it to exactly that.
        wanted = max(round(self._received / self.factor) - self._sent, 0)
        rest = self._pull()[:wanted]
        self._sent += wanted
        return np.pad(rest, (0, wanted - rest.size))

    def _pull(self) -> np.ndarray:
        assert self._graph is not None
        pieces = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):  # needs more input / finished
                break
            pieces.append(frame.to_ndarray()[0].copy())
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
