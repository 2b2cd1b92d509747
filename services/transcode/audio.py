"""What the transcode service does, without gRPC: one function per RPC.

Each takes the encoded input as bytes, checks its parameters before any
decoding, decodes with :mod:`decoder` to 44.1 kHz mono 16-bit PCM, and
returns PCM (or encoded bytes). Errors are :class:`ApiError` for the client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import numpy as np

from runtime.errors import ApiError, invalid_parameter
from services.transcode import decoder, encoder
from services.transcode.decoder import DECODE_FAILED, TOO_LARGE, TOO_LONG, Decoded, Limits, SourceInfo
from services.transcode.encoder import CONTENT_TYPES, Format
from services.transcode.pcm import SAMPLE_RATE, Pcm, join, silence

__all__ = [
    "DECODE_FAILED", "TOO_LARGE", "TOO_LONG", "Decoded", "Encoded", "Format", "Limits", "Pcm",
    "SourceInfo", "change_speed", "check_encoding", "concatenate", "decode", "encode", "atempo",
]  # fmt: skip

MIN_SPEED, MAX_SPEED = 0.5, 2.0
MAX_GAP_SECONDS = 10.0


@dataclass(frozen=True)
class Encoded:
    audio: bytes
    content_type: str
    duration_seconds: float


def decode(data: bytes, limits: Limits, max_duration_seconds: float = 0.0) -> Decoded:
    """DecodeAudio. ``max_duration_seconds`` lowers the duration limit for this call (0: the service's)."""
    _check_range("max_duration_seconds", max_duration_seconds, 0.0, math.inf)
    if max_duration_seconds > 0:
        limits = replace(limits, max_duration_seconds=min(max_duration_seconds, limits.max_duration_seconds))
    return decoder.decode(data, limits)


def concatenate(
    clips: list[bytes], limits: Limits, gap_seconds: float = 0.0, max_duration_seconds: float = 0.0
) -> Pcm:
    """ConcatenateAudio: the clips in order with ``gap_seconds`` of silence between, trimmed.

    Without a trim the joined audio must fit the duration limit. With one, each
    clip is decoded only as far as the trim needs (clips past it are still
    checked to be audio), so memory and time stay bounded either way.
    """
    if not clips:
        raise invalid_parameter("clips", "at least one clip is required")
    _check_range("gap_seconds", gap_seconds, 0.0, MAX_GAP_SECONDS)
    _check_range("max_duration_seconds", max_duration_seconds, 0.0, math.inf)
    trim = min(max_duration_seconds, limits.max_duration_seconds) if max_duration_seconds > 0 else None
    gap = silence(gap_seconds)
    parts: list[Pcm] = []
    total = 0.0
    for index, clip in enumerate(clips):
        if index:
            parts.append(gap)
            total += gap.duration_seconds
        try:
            if trim is None:
                budget = replace(limits, max_duration_seconds=limits.max_duration_seconds - total)
                decoded = decoder.decode(clip, budget, param="clips")
            else:
                decoded = decoder.decode(clip, limits, keep_seconds=max(trim - total, 0.0), param="clips")
        except ApiError as error:
            raise _clip_error(error, index, len(clips), limits) from None
        parts.append(decoded.pcm)
        total += decoded.pcm.duration_seconds
    joined = join(parts)
    return joined.trimmed(trim) if trim is not None else joined


def change_speed(data: bytes, speed_factor: float, limits: Limits) -> Pcm:
    """ChangeSpeed: the audio played ``speed_factor`` times as fast, at the same pitch."""
    _check_range("speed_factor", speed_factor, MIN_SPEED, MAX_SPEED)
    return atempo(decoder.decode(data, limits).pcm, speed_factor)


def encode(data: bytes, fmt: Format, bit_rate: int, limits: Limits, sample_rate: int = 0) -> Encoded:
    """EncodeAudio: any decodable audio in ``fmt``; ``bit_rate`` 0 is the format's default,
    ``sample_rate`` 0 keeps 44.1 kHz."""
    check_encoding(fmt, bit_rate, sample_rate)
    pcm = decoder.decode(data, limits).pcm
    encoded = encoder.encode(pcm, fmt, bit_rate, sample_rate or SAMPLE_RATE)
    return Encoded(encoded, CONTENT_TYPES[fmt], pcm.duration_seconds)


def check_encoding(fmt: Format, bit_rate: int, sample_rate: int) -> None:
    """INVALID_PARAMETER for a bit rate or sample rate the format does not take."""
    allowed = encoder.bit_rate_range(fmt)
    if bit_rate and allowed is not None:
        _check_range("bit_rate", bit_rate, *allowed)
    elif bit_rate < 0:
        raise invalid_parameter("bit_rate", "bit_rate must not be negative")
    if sample_rate and sample_rate not in encoder.SAMPLE_RATES:
        rates = ", ".join(map(str, encoder.SAMPLE_RATES))
        raise invalid_parameter("sample_rate", f"sample_rate must be 0 (44100) or one of {rates}; got {sample_rate}")


def atempo(pcm: Pcm, factor: float) -> Pcm:
    """Time-stretch with FFmpeg's atempo filter (WSOLA: the pitch stays)."""
    if factor == 1.0 or not len(pcm.samples):
        return pcm
    graph = av.filter.Graph()
    source = graph.add_abuffer(
        format="s16", sample_rate=SAMPLE_RATE, layout="mono", time_base=Fraction(1, SAMPLE_RATE)
    )
    tempo = graph.add("atempo", tempo=repr(float(factor)))
    # Pin the output to what went in, whatever format atempo prefers to work in.
    pinned = graph.add("aformat", sample_fmts="s16", channel_layouts="mono", sample_rates=str(SAMPLE_RATE))
    sink = graph.add("abuffersink")
    graph.link_nodes(source, tempo, pinned, sink).configure()
    out: list[Pcm] = []
    for frame in pcm.frames():
        graph.push(frame)
        out += _pull_all(graph)
    graph.push(None)  # end of stream: atempo flushes what it holds
    out += _pull_all(graph)
    # atempo's output runs a few ms off len/factor (its windows overlap the
    # ends); cut or pad it to the exact length, which callers can rely on.
    target = round(len(pcm.samples) / factor)
    stretched = join(out).samples[:target]
    return Pcm(np.pad(stretched, (0, target - len(stretched))))


def _pull_all(graph: av.filter.Graph) -> list[Pcm]:
    frames = []
    while True:
        try:
            frame = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):  # needs more input / finished
            return frames
        frames.append(Pcm(frame.to_ndarray()[0].copy()))


def _check_range(param: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f"at least {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"
        raise invalid_parameter(param, f"{param} must be {bounds}, got {value:g}")


def _clip_error(error: ApiError, index: int, count: int, limits: Limits) -> ApiError:
    """A decoding error of one clip, said of that clip, or of the whole when it is the joined length."""
    if error.reason == TOO_LONG:
        message = f"the joined audio is longer than the limit of {limits.max_duration_seconds:g} s"
    else:
        message = f"clip {index + 1} of {count}: {error.message}"
    return ApiError(error.code, error.reason, message, param="clips")
