"""Decoding untrusted audio bytes, in process with FFmpeg (PyAV), to :class:`Pcm`.

Input comes from users, so decoding is defensive: the byte limit is checked
before FFmpeg sees anything, the duration limit is enforced frame by frame as
audio comes out of the decoder (a few KB of FLAC can declare hours of silence),
and loops that stop producing audio, or take too long, are cut short. Every
failure is an :class:`ApiError` with a message for the caller, never a
traceback.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from runtime.errors import ApiError, invalid_argument
from services.transcode import truncation
from services.transcode.pcm import SAMPLE_RATE, Pcm, float_to_int16, frame_to_mono

log = logging.getLogger(__name__)

DECODE_FAILED = "AUDIO_DECODE_FAILED"
TOO_LARGE = "AUDIO_TOO_LARGE"
TOO_LONG = "AUDIO_TOO_LONG"

# What PyAV raises for broken input: FFmpegError subclasses mostly, but also
# plain Python errors from its wrappers (no stream, odd layouts, short reads).
BROKEN_INPUT = (av.error.FFmpegError, OSError, EOFError, ValueError, IndexError, KeyError, OverflowError)

# The demuxers an upload may use: audio containers, and video ones that carry
# audio. Others read further files or URLs named in the input (an ffconcat
# script or HLS playlist would make the service read its own disk), so FFmpeg
# is told to refuse them before they open anything.
AUDIO_DEMUXERS = (
    "aac,ac3,aiff,amr,ape,asf,au,avi,caf,dts,eac3,flac,flv,matroska,mov,mp3,mpc,mpc8,"
    "mpeg,mpegts,ogg,tta,voc,w64,wav,wv"
)

# Consecutive audio packets that may decode to nothing before we give up:
# decoders hold back a few packets at the start, never hundreds.
MAX_PACKETS_WITHOUT_AUDIO = 500


@dataclass(frozen=True)
class Limits:
    max_input_bytes: int
    max_duration_seconds: float
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class SourceInfo:
    format: str  # FFmpeg's name of the container, "matroska,webm"
    codec: str  # "opus"
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class Decoded:
    pcm: Pcm
    source: SourceInfo


def decode_failed(message: str) -> ApiError:
    return invalid_argument(DECODE_FAILED, message)


def too_large(limit_bytes: int, size: int | None = None) -> ApiError:
    """Input over the byte limit; `size` None when it is refused before all of it has arrived."""
    if size is None:
        return invalid_argument(TOO_LARGE, f"audio is over the limit of {limit_bytes} bytes", "audio")
    return invalid_argument(TOO_LARGE, f"audio is {size} bytes, over the limit of {limit_bytes} bytes", "audio")


def too_long(limit_seconds: float) -> ApiError:
    return invalid_argument(TOO_LONG, f"audio is longer than the limit of {limit_seconds:g} s")


def decode(
    data: bytes, limits: Limits, *, keep_seconds: float | None = None, param: str = "audio"
) -> Decoded:
    """Decode any audio FFmpeg reads to 44.1 kHz mono 16-bit PCM.

    With ``keep_seconds`` only the start is decoded and longer audio is cut
    there instead of refused (for trimming). ``param`` names the request field
    the errors point at.
    """
    try:
        return _decode(data, limits, keep_seconds)
    except ApiError as error:
        error.param = param
        raise


def _decode(data: bytes, limits: Limits, keep_seconds: float | None) -> Decoded:
    if not data:
        raise decode_failed("audio is empty")
    if len(data) > limits.max_input_bytes:
        raise too_large(limits.max_input_bytes, len(data))
    try:
        container = av.open(
            io.BytesIO(data), container_options={"format_whitelist": AUDIO_DEMUXERS}, metadata_errors="ignore"
        )
    except EOFError:  # FFmpeg knew the format but the data ended before any audio
        raise decode_failed("audio ends before its first audio data (truncated or header only?)") from None
    except BROKEN_INPUT as error:
        log.info("unreadable audio input", extra={"error": repr(error)})
        raise decode_failed("not a recognised audio format") from None
    with container:
        if not container.streams.audio:
            raise decode_failed("no audio stream in the input")
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for it
            raise decode_failed("the audio codec is not supported")
        source = SourceInfo(
            format=container.format.name,
            codec=stream.codec_context.codec.canonical_name,
            sample_rate=stream.sample_rate or 0,
            channels=stream.channels or 0,
        )
        declared = truncation.declared_seconds(container, stream, data)
        # A declared duration far over the limit is refused before any decoding.
        if keep_seconds is None and declared is not None and declared > limits.max_duration_seconds + 0.5:
            limit = limits.max_duration_seconds
            message = f"audio declares {declared:.0f} s, over the limit of {limit:g} s"
            raise invalid_argument(TOO_LONG, message)
        decoding = _StreamDecoder(limits, keep_seconds)
        decoding.run(container, stream)
    if decoding.seconds == 0:
        raise decode_failed(f"decoded to no audio (truncated or header only?){decoding.problem}")
    if not decoding.stopped_early:
        _refuse_if_cut(data, source, declared, float(decoding.seconds))
    pcm = decoding.output()
    if keep_seconds is not None:
        pcm = pcm.trimmed(keep_seconds)
    return Decoded(pcm, source)


class _StreamDecoder:
    """Decodes one audio stream frame by frame, counting seconds as they come out."""

    def __init__(self, limits: Limits, keep_seconds: float | None) -> None:
        self.limits = limits
        self.keep_seconds = keep_seconds
        # Decoded so far, at the source sample rate; exact, so that a clip of exactly
        # the limit is never refused for float rounding (2 s of 8 kHz frames summed as
        # floats comes to 2.0000000000000013).
        self.seconds = Fraction(0)
        self.stopped_early = False
        self.problem = ""  # why decoding ended early, for the error message
        self.resampler = _MonoResampler()

    def run(self, container: av.container.InputContainer, stream: av.AudioStream) -> None:
        deadline = time.monotonic() + self.limits.timeout_seconds
        packets = failed = without_audio = 0
        try:
            for packet in container.demux(stream):
                if packet.size:  # size 0 is PyAV's end-of-stream packet that drains the decoder
                    packets += 1
                try:
                    frames = packet.decode()
                except BROKEN_INPUT as error:
                    failed += 1
                    self.problem = _ffmpeg_reason(error)
                    frames = []
                if self._take(frames):
                    without_audio = 0
                else:
                    without_audio += 1
                if self.stopped_early:
                    return
                if without_audio > MAX_PACKETS_WITHOUT_AUDIO:
                    raise decode_failed(
                        f"audio data is damaged: {without_audio} packets in a row decode to nothing"
                    )
                if time.monotonic() > deadline:
                    raise decode_failed(f"audio took longer than {self.limits.timeout_seconds:g} s to decode")
        except BROKEN_INPUT as error:
            # The demuxer cannot read on (cut or damaged file): keep what decoded,
            # the truncation checks in _decode judge whether that is acceptable.
            self.problem = _ffmpeg_reason(error)
        if failed and self.seconds and failed * 2 > packets:
            raise decode_failed(f"audio data is damaged: {failed} of {packets} packets fail to decode")

    def _take(self, frames: list[av.AudioFrame]) -> bool:
        """Add decoded frames; False when there was no audio in them."""
        produced = False
        for frame in frames:
            if frame.samples == 0 or not frame.sample_rate:
                continue
            produced = True
            self.seconds += Fraction(frame.samples, frame.sample_rate)
            if self.keep_seconds is None and self.seconds > self.limits.max_duration_seconds:
                raise too_long(self.limits.max_duration_seconds)
            self.resampler.add(frame_to_mono(frame), frame.sample_rate)
            if self.keep_seconds is not None and self.seconds >= self.keep_seconds:
                self.stopped_early = True
                break
        return produced

    def output(self) -> Pcm:
        return Pcm(self.resampler.finish())


class _MonoResampler:
    """Resamples mono float audio of any rate to 44.1 kHz int16.

    Audio goes through FFmpeg in blocks of about a second rather than frame by
    frame: PyAV's cost per call is far larger than the resampling of one
    20 ms frame. A change of sample rate mid-stream starts a new resampler.
    """

    def __init__(self) -> None:
        self.rate = 0
        self.resampler: av.AudioResampler | None = None
        self.pending: list[np.ndarray] = []
        self.pending_samples = 0
        self.pts = 0
        self.out: list[np.ndarray] = []

    def add(self, mono: np.ndarray, rate: int) -> None:
        if rate != self.rate:
            self._flush(final=True)
            self.rate, self.pts = rate, 0
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self.pending.append(mono)
        self.pending_samples += len(mono)
        if self.pending_samples >= rate:
            self._flush()

    def finish(self) -> np.ndarray:
        self._flush(final=True)
        return np.concatenate(self.out) if self.out else np.zeros(0, dtype=np.int16)

    def _flush(self, final: bool = False) -> None:
        if self.resampler is None:
            return
        if self.pending:
            block = np.concatenate(self.pending)
            self.pending, self.pending_samples = [], 0
            frame = av.AudioFrame.from_ndarray(block[np.newaxis, :], format="flt", layout="mono")
            frame.sample_rate = self.rate
            frame.time_base = Fraction(1, self.rate)
            frame.pts = self.pts
            self.pts += len(block)
            self._keep(self.resampler.resample(frame))
        if final:
            self._keep(self.resampler.resample(None))

    def _keep(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self.out.append(float_to_int16(frame.to_ndarray()[0]))


def _refuse_if_cut(data: bytes, source: SourceInfo, declared: float | None, decoded: float) -> None:
    if declared is not None and truncation.is_short(decoded, declared):
        raise decode_failed(
            f"audio is truncated: it declares {declared:.2f} s but only {decoded:.2f} s decode"
        )
    if source.format == "ogg" and truncation.ogg_ends_mid_page(data):
        raise decode_failed("audio is truncated: the Ogg stream ends in the middle of a page")


def _ffmpeg_reason(error: BaseException) -> str:
    """FFmpeg's one-line reason (": Invalid data found when processing input"), if it gave one."""
    reason = getattr(error, "strerror", None) if isinstance(error, av.error.FFmpegError) else None
    return f": {reason}" if reason else ""
