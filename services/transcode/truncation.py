"""Telling a cut file from a short one.

FFmpeg decodes what is there of a truncated file without complaint. A file is
known to be cut when the length it declares is longer than what decodes, but
only some formats declare a length: MP3 without a Xing/Info header and ADTS
have durations FFmpeg estimates from the bit rate (far off for VBR), and FFmpeg
clamps a WAV's to the bytes present, so those are read here from the headers
themselves. An Ogg stream declares no length, but a cut one ends mid-page.
"""

from __future__ import annotations

import av

# Containers whose duration is written by the muxer.
DECLARING_FORMATS = {"flac", "ogg", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"}


def declared_seconds(
    container: av.container.InputContainer, stream: av.AudioStream, data: bytes
) -> float | None:
    """The duration the file says it has, where it says so rather than FFmpeg guessing."""
    name = container.format.name
    if name == "wav":
        return _wav_declared_seconds(data, stream)
    if name not in DECLARING_FORMATS and not (name == "mp3" and _has_mp3_length_header(data)):
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    # The container's duration covers every stream; trust it only for audio-only files.
    if container.duration and all(s.type == "audio" for s in container.streams):
        return container.duration / av.time_base
    return None


def is_short(decoded_seconds: float, declared: float) -> bool:
    # Slack for codec priming and padding, which make the two differ by tens of ms.
    return decoded_seconds + 0.1 + 0.01 * declared < declared


def ogg_ends_mid_page(data: bytes) -> bool:
    """Whether an Ogg file's last page is incomplete (27-byte header, segment table, body)."""
    position = 0
    while position < len(data):
        if data[position : position + 4] != b"OggS":
            return False  # not a page: trailing bytes of another kind, not a cut
        segments = data[position + 26] if position + 26 < len(data) else 0
        table_end = position + 27 + segments
        if table_end > len(data):
            return True
        position = table_end + sum(data[position + 27 : table_end])
    return position > len(data)


def _wav_declared_seconds(data: bytes, stream: av.AudioStream) -> float | None:
    """Duration from a PCM WAV's data chunk size."""
    byte_rate = (stream.codec_context.bit_rate or 0) / 8
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE" or byte_rate <= 0:
        return None
    if not stream.codec_context.codec.canonical_name.startswith("pcm_"):
        return None
    position = 12
    while position + 8 <= len(data):
        chunk = data[position : position + 4]
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk == b"data":
            # Writers that cannot seek back leave 0 or a huge placeholder.
            return size / byte_rate if 0 < size < 0x7FFF0000 else None
        position += 8 + size + (size & 1)
    return None


def _has_mp3_length_header(data: bytes) -> bool:
    """Whether the first MP3 frame is a Xing/Info/VBRI header, which counts the frames."""
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # skip an ID3v2 tag; its size is 4 x 7 bits
        start = 10 + int.from_bytes(bytes(byte & 0x7F for byte in data[6:10]), "big")
    first_frame = data[start : start + 200]
    return any(tag in first_frame for tag in (b"Xing", b"Info", b"VBRI"))
