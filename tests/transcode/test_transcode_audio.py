"""Unit tests of the transcode service's audio logic, without gRPC."""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest

from runtime import config as runtime_config
from runtime.errors import ApiError
from services.transcode import audio, config, decoder, truncation
from services.transcode.audio import Format, Limits
from services.transcode.pcm import Pcm
from tests.audio import wav_file
from tests.transcode import clips

LIMITS = Limits(max_input_bytes=10 * 1024 * 1024, max_duration_seconds=600.0, timeout_seconds=30.0)


def refused(reason: str, call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), error
    assert "Traceback" not in error.message
    return error


def tone_pcm(seconds: float, freq: float = 440.0) -> Pcm:
    return audio.decode(clips.wav(clips.tone(seconds, 44100, freq=freq), 44100), LIMITS).pcm


# --- Settings -------------------------------------------------------------------------


def test_settings_are_declared_with_the_transcode_prefix_and_defaults():
    ours = [value for value in vars(config).values() if isinstance(value, runtime_config.Setting)]
    assert ours and all(item.name.startswith("TRANSCODE_") for item in ours)
    assert all(runtime_config.REGISTRY[item.name] is item for item in ours)
    assert config.MAX_INPUT_BYTES.default == 50 * 1024 * 1024
    assert config.MAX_DURATION_SECONDS.default == 600.0
    assert config.WORKERS.default == 2


@pytest.mark.parametrize(
    "setting, raw",
    [
        (config.MAX_INPUT_BYTES, "0"),
        (config.MAX_DURATION_SECONDS, "0"),
        (config.DECODE_TIMEOUT_SECONDS, "-1"),
        (config.DECODE_TIMEOUT_SECONDS, "nan"),
        (config.WORKERS, "0"),
    ],
)
def test_settings_refuse_values_past_their_bound_at_start_up(monkeypatch, setting, raw):
    monkeypatch.setenv(setting.name, raw)
    with pytest.raises(SystemExit, match=setting.name):
        setting.value


# --- Decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", clips.FORMATS)
def test_every_upload_format_decodes_to_44k_mono_of_its_duration(fmt):
    decoded = audio.decode(clips.clip(fmt, seconds=2.0), LIMITS)
    # AAC in ADTS carries no priming information, so it decodes a frame or two long.
    assert decoded.pcm.duration_seconds == pytest.approx(2.0, abs=0.05)
    assert decoded.pcm.samples.dtype == np.int16
    assert clips.dominant_frequency(decoded.pcm.samples, 44100) == pytest.approx(440, rel=0.01)
    assert decoded.source.channels == 2
    params, _ = clips.read_wav(decoded.pcm.wav())
    assert (params.framerate, params.nchannels, params.sampwidth) == (44100, 1, 2)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 96000])
def test_any_sample_rate_is_resampled_keeping_duration_and_pitch(rate):
    decoded = audio.decode(clips.wav(clips.tone(1.5, rate, freq=1000.0), rate), LIMITS)
    assert decoded.source.sample_rate == rate
    assert decoded.pcm.duration_seconds == pytest.approx(1.5, abs=0.001)
    assert clips.dominant_frequency(decoded.pcm.samples, 44100) == pytest.approx(1000.0, rel=0.01)


def test_downmix_is_the_average_of_the_channels_not_ffmpegs_louder_mix():
    same = clips.tone(1.0, 44100, channels=2, amplitude=0.5)
    def mono_peak(data: bytes) -> float:
        return clips.peak(audio.decode(data, LIMITS).pcm.samples)

    assert mono_peak(clips.wav(same, 44100)) == pytest.approx(0.5, rel=0.01)
    one_side = same * np.array([[1.0], [0.0]], dtype=np.float32)  # FFmpeg's mix would give 0.354
    assert mono_peak(clips.wav(one_side, 44100)) == pytest.approx(0.25, rel=0.01)
    flac = clips.encode(same, 48000, "flac", "flac")  # decoded as s16 at 48 kHz, another path than WAV's
    assert mono_peak(flac) == pytest.approx(0.5, rel=0.01)


def test_lossless_input_at_44k_mono_comes_back_sample_for_sample():
    source = clips.wav(clips.tone(0.5, 44100), 44100)
    assert audio.decode(source, LIMITS).pcm.wav() == source


BROKEN = {
    "empty": (b"", "audio is empty"),
    "random bytes": (clips.random_bytes(), "not a recognised audio format"),
    "text": (b"hello, this is not audio at all" * 10, "not a recognised audio format"),
    "header-only wav": (clips.header_only("wav"), "decoded to no audio"),
    "header-only webm": (clips.header_only("webm"), "truncated or header only"),
    "header-only ogg": (clips.header_only("ogg"), "truncated or header only"),
    "header-only flac": (clips.header_only("flac"), "decoded to no audio"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_input_is_refused_saying_what_is_wrong(name):
    data, says = BROKEN[name]
    error = refused("AUDIO_DECODE_FAILED", audio.decode, data, LIMITS)
    assert says in error.message
    assert error.param == "audio"


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "webm", "m4a"])
def test_truncated_files_are_refused(fmt):
    data = clips.clip(fmt, seconds=2.0)
    error = refused("AUDIO_DECODE_FAILED", audio.decode, data[: len(data) // 2], LIMITS)
    assert "truncated" in error.message or "not a recognised" in error.message  # m4a loses its index


def test_no_damage_ever_escapes_as_anything_but_an_api_error():
    rng = np.random.default_rng(3)
    for fmt in clips.FORMATS:
        data = clips.clip(fmt, seconds=0.5)
        for _ in range(12):
            damaged = bytearray(data)
            start = int(rng.integers(len(damaged)))
            damaged[start : start + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            for variant in (bytes(damaged), bytes(damaged[: int(rng.integers(1, len(damaged)))])):
                try:
                    audio.decode(variant, LIMITS)
                except ApiError as error:
                    assert error.reason in ("AUDIO_DECODE_FAILED", "AUDIO_TOO_LONG"), error


def test_playlists_and_scripts_cannot_make_ffmpeg_read_other_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server-side.wav").write_bytes(clips.clip("wav", seconds=1.0))
    for script in (
        b"ffconcat version 1.0\nfile 'server-side.wav'\n",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nserver-side.wav\n#EXT-X-ENDLIST\n",
    ):
        error = refused("AUDIO_DECODE_FAILED", audio.decode, script, LIMITS)
        assert error.message == "not a recognised audio format"


# --- Limits ---------------------------------------------------------------------------


def test_size_limit_is_checked_before_decoding_at_its_exact_edge():
    data = clips.clip("flac", seconds=0.5)
    exact = Limits(len(data), 600.0)
    assert audio.decode(data, exact).pcm.duration_seconds == pytest.approx(0.5, abs=0.001)
    error = refused("AUDIO_TOO_LARGE", audio.decode, data + b"\0", exact)
    assert str(len(data)) in error.message


def test_a_file_declaring_hours_is_refused_without_decoding():
    hour = clips.silent_flac(3600)
    started = time.perf_counter()
    error = refused("AUDIO_TOO_LONG", audio.decode, hour, LIMITS)
    assert time.perf_counter() - started < 1.0
    assert "600 s" in error.message


def test_duration_limit_stops_decoding_as_soon_as_it_is_crossed(monkeypatch):
    """A stream that declares no duration is counted frame by frame and cut at the limit."""
    hour = clips.silent_flac(3600, seekable=False)  # 8 s FLAC frames
    seconds_decoded = []
    original = decoder.frame_to_mono

    def counting(frame):
        seconds_decoded.append(frame.samples / frame.sample_rate)
        return original(frame)

    monkeypatch.setattr(decoder, "frame_to_mono", counting)
    error = refused("AUDIO_TOO_LONG", audio.decode, hour, LIMITS)
    assert "600 s" in error.message
    assert sum(seconds_decoded) <= 600.0  # the frame that crosses the limit is never even converted


def test_a_request_may_lower_the_duration_limit_but_not_raise_it():
    data = clips.clip("wav", seconds=3.0)
    refused("AUDIO_TOO_LONG", audio.decode, data, LIMITS, max_duration_seconds=2.5)
    assert audio.decode(data, LIMITS, max_duration_seconds=3.5).pcm.duration_seconds == pytest.approx(3.0)
    two_seconds = Limits(LIMITS.max_input_bytes, 2.0)
    refused("AUDIO_TOO_LONG", audio.decode, data, two_seconds, max_duration_seconds=10)
    refused("INVALID_PARAMETER", audio.decode, data, LIMITS, max_duration_seconds=-1)


def test_decoding_that_runs_past_its_time_is_cut_short():
    data = clips.clip("webm", seconds=2.0)
    error = refused("AUDIO_DECODE_FAILED", audio.decode, data, Limits(LIMITS.max_input_bytes, 600.0, 0.0))
    assert "longer than 0 s to decode" in error.message


class _EndlessEmptyPackets:
    """A demuxer stuck in a loop: packets forever, none of which decodes to audio."""

    class Packet:
        size = 100

        def decode(self):
            return []

    def demux(self, stream):
        while True:
            yield self.Packet()


def test_packets_that_never_decode_to_audio_do_not_loop_forever():
    run = decoder._StreamDecoder(LIMITS, keep_seconds=None)
    with pytest.raises(ApiError) as caught:
        run.run(_EndlessEmptyPackets(), stream=None)
    assert caught.value.reason == "AUDIO_DECODE_FAILED"
    assert "in a row decode to nothing" in caught.value.message


def test_truncation_helpers():
    ogg = clips.clip("ogg", seconds=2.0)
    assert not truncation.ogg_ends_mid_page(ogg)
    assert truncation.ogg_ends_mid_page(ogg[:-10])
    assert truncation.is_short(1.0, 2.0) and not truncation.is_short(1.98, 2.0)


# --- Concatenation --------------------------------------------------------------------


def test_concatenation_joins_clips_with_silence_between():
    first, second = clips.clip("wav", seconds=1.0), clips.clip("mp3", seconds=0.5)
    joined = audio.concatenate([first, second], LIMITS, gap_seconds=0.25)
    assert joined.duration_seconds == pytest.approx(1.75, abs=0.005)
    gap = joined.samples[int(1.01 * 44100) : int(1.24 * 44100)]
    assert np.abs(gap).max() == 0
    assert audio.concatenate([first], LIMITS).duration_seconds == pytest.approx(1.0)


def test_concatenation_trims_without_decoding_past_the_trim():
    clip = clips.clip("flac", seconds=1.0)
    joined = audio.concatenate([clip] * 4, LIMITS, gap_seconds=0.5, max_duration_seconds=2.2)
    assert joined.duration_seconds == pytest.approx(2.2, abs=1 / 44100)
    # A clip of an hour is fine when the trim only needs its start.
    trimmed = audio.concatenate([clip, clips.silent_flac(3600)], LIMITS, 0.0, max_duration_seconds=5.0)
    assert trimmed.duration_seconds == pytest.approx(5.0, abs=1 / 44100)


def test_joined_audio_must_fit_the_duration_limit():
    clip = clips.clip("wav", seconds=1.0)
    small = Limits(LIMITS.max_input_bytes, 2.5)
    audio.concatenate([clip, clip], small, gap_seconds=0.4)
    error = refused("AUDIO_TOO_LONG", audio.concatenate, [clip, clip], small, gap_seconds=0.6)
    assert "joined audio" in error.message and "2.5 s" in error.message


@pytest.mark.parametrize("gap", [-0.1, 10.01, math.nan, math.inf])
def test_gap_must_be_between_zero_and_ten_seconds(gap):
    error = refused("INVALID_PARAMETER", audio.concatenate, [clips.clip("wav")], LIMITS, gap_seconds=gap)
    assert error.param == "gap_seconds"


def test_concatenation_needs_clips_and_names_the_broken_one():
    assert refused("INVALID_PARAMETER", audio.concatenate, [], LIMITS).param == "clips"
    error = refused("AUDIO_DECODE_FAILED", audio.concatenate, [clips.clip("wav"), b""], LIMITS)
    assert error.message == "clip 2 of 2: audio is empty"
    assert error.param == "clips"


# --- Speed ----------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 2.0])
def test_atempo_changes_duration_but_not_pitch(factor):
    pcm = tone_pcm(3.0, freq=440.0)
    faster = audio.atempo(pcm, factor)
    assert len(faster.samples) == round(3.0 * 44100 / factor)
    assert clips.dominant_frequency(faster.samples, 44100) == pytest.approx(440.0, rel=0.02)
    # Stretched all the way to the end, not padded: the tone (RMS 0.354) is still there.
    tail = faster.samples[-4410:].astype(np.float64) / 32768
    assert np.sqrt(np.mean(tail**2)) > 0.25


def test_speed_factor_one_is_the_input_and_the_range_is_enforced():
    source = clips.wav(clips.tone(1.0, 44100), 44100)
    assert audio.change_speed(source, 1.0, LIMITS).wav() == source
    for factor in (0.0, 0.4, 2.5, math.nan):
        error = refused("INVALID_PARAMETER", audio.change_speed, source, factor, LIMITS)
        assert error.param == "speed_factor"


# --- Encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in Format if f is not Format.PCM])
def test_each_format_decodes_back_to_the_same_duration(fmt):
    source = clips.clip("wav", seconds=2.0)
    encoded = audio.encode(source, fmt, 0, LIMITS)
    assert encoded.duration_seconds == pytest.approx(2.0)
    container, codec, rate, channels, seconds = clips.probe(encoded.audio)
    assert channels == 1 and rate == (48000 if fmt is Format.OGG_OPUS else 44100)
    assert seconds == pytest.approx(2.0, abs=0.05)
    expected = {
        Format.WAV: ("audio/wav", "wav"),
        Format.FLAC: ("audio/flac", "flac"),
        Format.MP3: ("audio/mpeg", "mp3"),
        Format.OGG_OPUS: ("audio/ogg", "ogg"),
        Format.AAC: ("audio/aac", "aac"),
    }[fmt]
    assert (encoded.content_type, container) == expected


def test_a_clip_of_a_few_samples_still_encodes_to_opus():
    source = clips.wav(clips.tone(10 / 44100, 44100), 44100)
    encoded = audio.encode(source, Format.OGG_OPUS, 0, LIMITS).audio
    assert clips.probe(encoded)[:2] == ("ogg", "opus")


def test_flac_and_pcm_are_lossless():
    source = clips.clip("wav", seconds=1.0)
    reference = audio.decode(source, LIMITS).pcm.samples
    flac = audio.encode(source, Format.FLAC, 0, LIMITS).audio
    assert np.array_equal(audio.decode(flac, LIMITS).pcm.samples, reference)
    pcm = audio.encode(source, Format.PCM, 0, LIMITS)
    assert pcm.content_type == "audio/pcm"
    assert np.array_equal(np.frombuffer(pcm.audio, dtype="<i2"), reference)


def test_bit_rate_is_used_and_checked():
    source = clips.clip("wav", seconds=2.0)
    low = audio.encode(source, Format.MP3, 64_000, LIMITS).audio
    high = audio.encode(source, Format.MP3, 192_000, LIMITS).audio
    assert len(high) > 2 * len(low)
    error = refused("INVALID_PARAMETER", audio.encode, source, Format.OGG_OPUS, 1_000, LIMITS)
    assert error.param == "bit_rate"
    assert refused("INVALID_PARAMETER", audio.encode, source, Format.WAV, -1, LIMITS).param == "bit_rate"
    audio.encode(source, Format.FLAC, 64_000, LIMITS)  # lossless formats ignore it


@pytest.mark.parametrize("fmt", list(Format))
def test_output_at_another_sample_rate_keeps_duration_and_pitch(fmt):
    source = clips.wav(clips.tone(1.5, 44100, freq=1000.0), 44100)
    encoded = audio.encode(source, fmt, 0, LIMITS, sample_rate=24000)
    if fmt is Format.PCM:  # no header to say the rate: the sample count does
        samples = np.frombuffer(encoded.audio, dtype="<i2")
        assert len(samples) == 36000  # 1.5 s at 24 kHz, exactly
        assert clips.dominant_frequency(samples, 24000) == pytest.approx(1000.0, rel=0.01)
        return
    container, codec, rate, channels, seconds = clips.probe(encoded.audio)
    assert channels == 1 and rate == (48000 if fmt is Format.OGG_OPUS else 24000)
    # ADTS carries no priming information: AAC decodes up to two 1024-sample frames long.
    assert seconds == pytest.approx(1.5, abs=2 * 1024 / 24000 + 0.001)
    back = audio.decode(encoded.audio, LIMITS).pcm
    assert clips.dominant_frequency(back.samples, 44100) == pytest.approx(1000.0, rel=0.01)


def test_sample_rate_zero_keeps_44_1_khz_and_others_must_be_a_standard_rate():
    source = clips.clip("wav", seconds=0.5)
    default = audio.encode(source, Format.PCM, 0, LIMITS)
    assert default.audio == audio.encode(source, Format.PCM, 0, LIMITS, sample_rate=44100).audio
    assert len(default.audio) == 2 * 22050
    audio.encode(source, Format.MP3, 0, LIMITS, sample_rate=8000)  # the lowest MP3 takes
    audio.encode(source, Format.MP3, 0, LIMITS, sample_rate=48000)  # the highest
    for rate in (7999, 96000, -24000):
        error = refused("INVALID_PARAMETER", audio.encode, source, Format.PCM, 0, LIMITS, sample_rate=rate)
        assert error.param == "sample_rate" and "24000" in error.message


@pytest.mark.parametrize("rate", [4000, 8000, 16000, 22050, 44100])
def test_a_clip_of_exactly_the_duration_limit_passes_at_any_rate(rate):
    # Frame durations summed as floats drift past the limit at some rates.
    from services.transcode.decoder import Limits, decode

    limits = Limits(max_input_bytes=10**7, max_duration_seconds=2.0, timeout_seconds=10)
    decoded = decode(wav_file(np.zeros(2 * rate), rate), limits)
    assert abs(decoded.pcm.duration_seconds - 2.0) < 0.001
