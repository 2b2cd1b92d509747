"""End to end: the mesh's synth (tiny Dia) over gRPC."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest

from tests.synth.helpers import (
    FRAMES,
    FRAMES_WITHOUT_AUDIO,
    SAMPLE_RATE,
    audio_samples_for,
    error_of,
    metric,
    noise_wav,
    request,
    wav_layout,
    wav_samples,
)
from voice.synth.v1 import synth_pb2


def assert_valid_audio(reply: synth_pb2.SynthesizeResponse, frames: int = FRAMES) -> None:
    """44.1 kHz mono 16-bit WAV holding exactly the generated audio frames."""
    assert wav_layout(reply.wav) == (SAMPLE_RATE, 1, 16)
    assert reply.generated_frames == frames
    samples = wav_samples(reply.wav)
    assert samples.size == audio_samples_for(frames)
    assert reply.duration_seconds == pytest.approx(samples.size / SAMPLE_RATE)
    assert samples.any()  # noise, but not silence
    assert reply.model == "tiny-random"


async def test_a_script_becomes_a_wav_as_long_as_the_generated_frames(synth):
    reply = await synth.Synthesize(request(seed=1))
    assert_valid_audio(reply)
    assert reply.seed == 1


async def test_a_voice_prompt_conditions_the_audio_and_is_cut_from_it(synth):
    prompt_wav = noise_wav(1.0)
    prompt = (prompt_wav, "[S1] This is how I sound.")
    cloned = await synth.Synthesize(request(prompt=prompt, seed=4))
    assert_valid_audio(cloned)  # new frames only: the one second of prompt is not in it
    assert wav_samples(cloned.wav).size < wav_samples(prompt_wav).size + audio_samples_for(FRAMES)
    plain = await synth.Synthesize(request(seed=4))
    assert cloned.wav != plain.wav


async def test_the_same_seed_gives_identical_bytes_also_among_concurrent_requests(synth):
    first = await synth.Synthesize(request(seed=1234))
    others = [request(script=f"[S1] Someone else, number {n}.") for n in range(3)]
    replies = await asyncio.gather(
        synth.Synthesize(request(seed=1234)),
        *(synth.Synthesize(other) for other in others),
        synth.Synthesize(request(seed=1234)),
    )
    assert replies[0].wav == first.wav == replies[-1].wav
    assert all(reply.seed == 1234 for reply in (replies[0], replies[-1]))


async def test_different_seeds_give_different_audio(synth):
    one, two = await asyncio.gather(synth.Synthesize(request(seed=1)), synth.Synthesize(request(seed=2)))
    assert one.wav != two.wav


async def test_without_a_seed_a_random_one_is_chosen_and_repeats_the_audio(synth):
    random_reply = await synth.Synthesize(request(seed=-1))
    assert 0 <= random_reply.seed < 2**32
    repeated = await synth.Synthesize(request(seed=random_reply.seed))
    assert repeated.wav == random_reply.wav


async def test_temperature_zero_is_greedy_and_deterministic_without_a_seed(synth):
    one = await synth.Synthesize(request(temperature=0.0))
    two = await synth.Synthesize(request(temperature=0.0))
    assert one.seed != two.seed  # random seeds were drawn, and did not matter
    assert one.wav == two.wav
    assert_valid_audio(one)


async def test_max_new_tokens_must_leave_audio_after_the_delay_tail(synth):
    error = await error_of(synth.Synthesize(request(max_new_tokens=16)))
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "max_new_tokens"
    )
    shortest = await synth.Synthesize(request(max_new_tokens=17))
    assert_valid_audio(shortest, frames=17)  # one frame: 512 samples


@pytest.mark.parametrize(
    "field, value",
    [
        ("cfg_scale", 0.5), ("cfg_scale", 5.5),
        ("temperature", -0.1), ("temperature", 2.5), ("temperature", math.nan),
        ("top_p", 0.05), ("top_p", 1.5),
        ("cfg_filter_top_k", 0), ("cfg_filter_top_k", 101),
        ("speed_factor", 0.4), ("speed_factor", 2.1),
        ("max_new_tokens", 4097),
        ("seed", -2),
    ],
)
async def test_each_out_of_range_parameter_is_refused_naming_it(synth, field, value):
    error = await error_of(synth.Synthesize(request(**{field: value})))
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", field)


async def test_parameters_at_the_edges_of_their_ranges_are_served(synth):
    low = dict(cfg_scale=1.0, temperature=0.0, top_p=0.1, cfg_filter_top_k=1)
    high = dict(cfg_scale=5.0, temperature=2.0, top_p=1.0, cfg_filter_top_k=100)
    for settings in (low, high):
        assert_valid_audio(await synth.Synthesize(request(**settings)))


async def test_speed_factor_changes_the_duration_at_the_same_pitch(synth, mesh):
    normal, faster, slower = await asyncio.gather(
        synth.Synthesize(request(seed=9, max_new_tokens=100)),
        synth.Synthesize(request(seed=9, max_new_tokens=100, speed_factor=2.0)),
        synth.Synthesize(request(seed=9, max_new_tokens=100, speed_factor=0.5)),
    )
    assert faster.duration_seconds == pytest.approx(normal.duration_seconds / 2, rel=0.05)
    assert slower.duration_seconds == pytest.approx(normal.duration_seconds * 2, rel=0.05)
    for reply in (faster, slower):
        assert wav_layout(reply.wav) == (SAMPLE_RATE, 1, 16)
        assert wav_samples(reply.wav).size / SAMPLE_RATE == pytest.approx(reply.duration_seconds, abs=0.01)
        assert reply.generated_frames == 100 and reply.seed == 9


async def test_concurrent_requests_share_decode_steps_and_each_is_whole(synth, mesh):
    port = mesh.env["SYNTH_METRICS_PORT"]
    steps_before = metric(port, "synth_decode_steps_total")
    frames_before = metric(port, "synth_frames_generated_total")
    audio_before = metric(port, "synth_audio_seconds_generated_total")
    timed_before = metric(port, "synth_real_time_factor_count")
    first_frames_before = metric(port, "synth_time_to_first_frame_seconds_count")
    replies = await asyncio.gather(*(synth.Synthesize(request(script=f"[S1] Line {n}.")) for n in range(4)))
    assert metric(port, "synth_frames_generated_total") - frames_before == 4 * FRAMES
    # One after another they would take 4 * FRAMES steps; together, about FRAMES.
    assert metric(port, "synth_decode_steps_total") - steps_before < 2 * FRAMES
    # What the operator sees: the audio made, and each request's real-time factor and time to first frame.
    made = sum(reply.duration_seconds for reply in replies)
    assert metric(port, "synth_audio_seconds_generated_total") - audio_before == pytest.approx(made, rel=1e-3)
    assert metric(port, "synth_real_time_factor_count") - timed_before == 4
    assert metric(port, "synth_time_to_first_frame_seconds_count") - first_frames_before == 4
    for reply in replies:
        assert_valid_audio(reply)
    assert len({reply.seed for reply in replies}) == 4
    assert len({reply.wav for reply in replies}) == 4


async def test_provider_info_names_the_model_features_capacity_and_load(synth):
    idle = (await synth.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider
    assert [(m.id, sorted(m.features)) for m in idle.models] == [("tiny-random", ["dialogue", "voice-cloning"])]
    assert idle.capacity == 4 and idle.load == 0
    assert idle.provider_id and idle.address.startswith("127.0.0.1:")

    running = asyncio.ensure_future(synth.Synthesize(request(max_new_tokens=600)))
    loads = []
    while not running.done() and not any(loads):
        loads.append((await synth.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider.load)
    assert_valid_audio(await running, frames=600)
    assert max(loads) == 1
    assert (await synth.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider.load == 0


async def test_provider_info_carries_the_limits_of_the_loaded_model(synth, tiny_model_dir):
    from transformers import DacConfig, DiaConfig

    dia, dac = DiaConfig.from_pretrained(tiny_model_dir / "dia"), DacConfig.from_pretrained(tiny_model_dir / "dac")
    (model,) = (await synth.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider.models
    assert model.limits == synth_pb2.ModelLimits(
        decoder_positions=dia.decoder_config.max_position_embeddings,
        text_window_bytes=dia.encoder_config.max_position_embeddings,
        sample_rate=dac.sampling_rate,
        samples_per_frame=dac.hop_length,
    )
    # The tiny model copies what Dia-1.6B has.
    assert (model.limits.decoder_positions, model.limits.text_window_bytes) == (3072, 1024)
    assert (model.limits.sample_rate, model.limits.samples_per_frame) == (44100, 512)


@pytest.mark.parametrize(
    "kwargs, reason, param",
    [
        # A NUL is refused before the handler, naming the field's path in the request message.
        (dict(script=" <pad>\x00 "), "INVALID_PARAMETER", "synthesis.script"),
        (dict(script=" <pad> "), "INVALID_PARAMETER", "script"),
        (dict(model="nari-labs/Dia-1.6B-0626"), "INVALID_PARAMETER", "model"),
        (dict(prompt=(b"RIFF not really", "[S1] Hi.")), "AUDIO_DECODE_FAILED", "audio_prompt.wav"),
        (dict(prompt=(noise_wav(0.5, rate=16000), "[S1] Hi.")), "AUDIO_DECODE_FAILED", "audio_prompt.wav"),
        (dict(prompt=(noise_wav(0.5), "")), "MISSING_TRANSCRIPT", "audio_prompt.transcript"),
    ],
    ids=["nul-script", "empty-script", "other-model", "not-wav", "16-khz-prompt", "no-transcript"],
)
async def test_bad_requests_are_refused_clearly(synth, kwargs, reason, param):
    error = await error_of(synth.Synthesize(request(**kwargs)))
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, reason, param)


async def test_text_up_to_what_dia_reads_is_served_and_longer_is_refused(synth):
    words = "[S1]" + " word" * 300
    fits = words[: 4 + 1023]  # [S1] is one token, every other character here one byte: 1024 tokens
    assert_valid_audio(await synth.Synthesize(request(script=fits, max_new_tokens=17)), frames=17)
    error = await error_of(synth.Synthesize(request(script=fits + "s", max_new_tokens=17)))
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE", "script")


# --- codes out, and codes back in as a continuation's prompt --------------------------------------


def codes_of(reply) -> np.ndarray:
    return np.frombuffer(reply.codes, dtype="<i2").reshape(-1, reply.codebooks)


@pytest.mark.parametrize("speed_factor", [0.5, 1.5])
async def test_the_codes_returned_are_the_unstretched_generation_at_any_speed(synth, speed_factor):
    normal, stretched = await asyncio.gather(
        synth.Synthesize(request(seed=11, max_new_tokens=80)),
        synth.Synthesize(request(seed=11, max_new_tokens=80, speed_factor=speed_factor)),
    )
    assert stretched.duration_seconds == pytest.approx(normal.duration_seconds / speed_factor, rel=0.05)
    assert codes_of(normal).shape == (80 - FRAMES_WITHOUT_AUDIO, 9)
    assert np.array_equal(codes_of(stretched), codes_of(normal))  # what Dia made, before the tempo filter


async def test_a_stream_ends_with_the_codes_of_its_audio(synth):
    whole = await synth.Synthesize(request(seed=12, max_new_tokens=70))
    messages = [m async for m in synth.StreamSynthesize(synth_pb2.StreamSynthesizeRequest(synthesis=request(seed=12, max_new_tokens=70).synthesis))]
    assert messages[-1].last and messages[-1].codes == whole.codes and messages[-1].codebooks == 9
    assert not any(m.codes for m in messages[:-1])


def continuing(codes: bytes, codebooks: int = 9, transcript: str = "[S1] Hello, and welcome.", **settings):
    synthesis = request(**settings)
    synthesis.synthesis.codes_prompt.CopyFrom(
        synth_pb2.CodesPrompt(codes=codes, codebooks=codebooks, transcript=transcript)
    )
    return synthesis


async def test_a_generation_continues_from_codes_sent_back(synth):
    before = await synth.Synthesize(request(seed=13, max_new_tokens=60))
    tail = codes_of(before)[-20:]
    reply = await synth.Synthesize(continuing(tail.tobytes(), seed=13, max_new_tokens=60))
    assert reply.generated_frames == 60 and codes_of(reply).shape == (60 - FRAMES_WITHOUT_AUDIO, 9)
    # The prompt's 20 frames take decoder positions: max_new_tokens that do not fit beside them are lowered
    # only when the caller allows it.
    lowered = await synth.Synthesize(continuing(tail.tobytes(), max_new_tokens=3072, lower_max_new_tokens_to_fit=True))
    assert lowered.generated_frames <= 3072 - 20


@pytest.mark.parametrize(
    "codes, codebooks, param",
    [
        (np.zeros((10, 9), dtype="<i2").tobytes(), 8, "codes_prompt.codes"),  # not the model's codebooks
        (np.zeros((10, 9), dtype="<i2").tobytes()[:-2], 9, "codes_prompt.codes"),  # not whole frames
        (np.full((10, 9), 1024, dtype="<i2").tobytes(), 9, "codes_prompt.codes"),  # past the codec's codes
        (np.full((10, 9), -1, dtype="<i2").tobytes(), 9, "codes_prompt.codes"),
        (b"", 9, "codes_prompt.codes"),
    ],
)
async def test_codes_that_are_not_the_models_are_refused_naming_them(synth, codes, codebooks, param):
    error = await error_of(synth.Synthesize(continuing(codes, codebooks)))
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", param)


async def test_codes_without_a_transcript_are_refused(synth):
    error = await error_of(synth.Synthesize(continuing(np.zeros((10, 9), dtype="<i2").tobytes(), transcript=" ")))
    assert (error.reason, error.param) == ("MISSING_TRANSCRIPT", "codes_prompt.transcript")


async def test_one_prompt_at_a_time(synth):
    both = continuing(np.zeros((10, 9), dtype="<i2").tobytes())
    both.synthesis.audio_prompt.wav, both.synthesis.audio_prompt.transcript = noise_wav(0.5), "[S1] Hi."
    error = await error_of(synth.Synthesize(both))
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "codes_prompt")


@pytest.mark.parametrize("max_seconds", [0.0, 120.01])
async def test_a_voices_prompt_longer_than_the_provider_takes_is_refused_before_any_fetch(synth, mesh, max_seconds):
    fetches = metric(mesh.env["SYNTH_METRICS_PORT"], "synth_prompt_sample_fetches_total")
    voices = request()
    voices.synthesis.voices.CopyFrom(
        synth_pb2.VoicePrompt(
            account_id=1, samples=[synth_pb2.VoiceSampleRef(speaker="S1", sample_id=1)], max_seconds=max_seconds
        )
    )
    error = await error_of(synth.Synthesize(voices))
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "max_audio_prompt_seconds")
    assert metric(mesh.env["SYNTH_METRICS_PORT"], "synth_prompt_sample_fetches_total") == fetches


async def test_a_voices_prompt_of_the_longest_length_is_made_of_the_accounts_samples(synth, mesh):
    """At SYNTH_MAX_AUDIO_PROMPT_SECONDS itself the length is taken: the samples are fetched, as the account
    (here one that has no sample 1: INVALID_VOICE_SAMPLE naming the speaker)."""
    fetches = metric(mesh.env["SYNTH_METRICS_PORT"], "synth_prompt_sample_fetches_total")
    voices = request()
    voices.synthesis.voices.CopyFrom(
        synth_pb2.VoicePrompt(
            account_id=2**62, samples=[synth_pb2.VoiceSampleRef(speaker="S2", sample_id=1)], max_seconds=120
        )
    )
    error = await error_of(synth.Synthesize(voices))
    assert (error.reason, error.param) == ("INVALID_VOICE_SAMPLE", "speakers.S2")
    assert metric(mesh.env["SYNTH_METRICS_PORT"], "synth_prompt_sample_fetches_total") == fetches + 1
