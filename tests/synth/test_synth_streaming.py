"""Streamed synthesis: chunks decoded as frames arrive equal the one-shot decode; tempo as it flows."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import torch

from runtime.errors import ApiError
from services.synth.audio import SAMPLES_PER_FRAME
from services.synth.engine.core import SynthEngine
from services.synth.engine.output_processor import OutputProcessor
from services.synth.engine.request import Generated, SynthesisInput
from services.synth.engine.streaming import STARTED_OVER, FrameFeed, StreamingDecoder, StreamRestarted
from services.synth.engine.tempo import StreamingTempo, to_int16
from services.synth.params import GenerationParams
from services.transcode.audio import atempo
from services.transcode.pcm import Pcm
from tests.synth.helpers import SAMPLE_RATE, audio_samples_for, error_of, fail_decode_steps, request, wav_samples
from voice.synth.v1 import synth_pb2

# Joined chunks against the whole decoded at once: the tolerance the streaming promise is held to.
MIN_SNR_DB = 40.0


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.sum((reference - other) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(reference**2) / noise)


def params(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(
        cfg_scale=3.0, temperature=1.8, top_p=0.95, cfg_filter_top_k=45,
        max_new_tokens=max_new_tokens, speed_factor=1.0, seed=5,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def generated(dia):
    """One tiny-model generation through the engine, with every step's codes as the streaming hook saw
    them, and its whole audio decoded at once."""
    steps: list[torch.Tensor] = []
    starts: set[int] = set()

    def on_frames(codes: torch.Tensor, audio_start: int) -> None:
        steps.append(codes.clone())
        starts.add(audio_start)

    item = SynthesisInput(text="[S1] Hello there.", prompt=None, params=params(300), seed=5, on_frames=on_frames)
    engine = SynthEngine(1, 0.0, 1, 10**9, 0)
    engine.start(dia)
    try:
        streamed = await engine.submit(item)
    finally:
        await engine.close()
    (start,) = starts
    whole = OutputProcessor(dia).decode_codes(streamed.codes)
    return Generated(whole, streamed.generated_frames, streamed.codes), steps, start


def decode_with(dia):
    codec = dia.processor.audio_tokenizer

    def decode(codes: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return codec.decode(audio_codes=codes.T[None]).audio_values.float().numpy().reshape(-1)

    return decode


def stream(dia, steps, start, first=43, chunk=43, context=16, every=1) -> list[np.ndarray]:
    """Push the hook's frames (every `every` steps, as a slow consumer would) and decode each chunk."""
    decoder = StreamingDecoder(dia.delay_pattern, dia.special_tokens["eos_token_id"], first, chunk, context)
    decode, out, sent = decode_with(dia), [], start
    for number, codes in enumerate(steps):
        if number % every and number != len(steps) - 1:
            continue
        out += [c.samples(decode) for c in decoder.push(codes[sent:])]
        sent = codes.shape[0]
    out += [c.samples(decode) for c in decoder.finish()]
    return out


def test_the_hook_sees_every_step_and_the_final_codes(generated):
    result, steps, start = generated
    assert [codes.shape[0] for codes in steps] == list(range(steps[0].shape[0], steps[0].shape[0] + len(steps)))
    assert steps[-1].shape[0] - start == result.generated_frames


@pytest.mark.parametrize("every", [1, 7])
def test_streamed_chunks_joined_equal_the_one_shot_decode(dia, generated, every):
    result, steps, start = generated
    chunks = stream(dia, steps, start, every=every)
    joined = np.concatenate(chunks)
    assert joined.size == result.samples.size
    assert snr_db(result.samples, joined) >= MIN_SNR_DB
    assert len(chunks) > 3  # streamed, not one piece


def test_without_context_the_boundaries_differ(dia, generated):
    """The context is what makes the edges match: the test would notice it missing."""
    result, steps, start = generated
    joined = np.concatenate(stream(dia, steps, start, context=0))
    assert snr_db(result.samples, joined) < MIN_SNR_DB


def test_the_first_chunk_leaves_once_its_frames_are_complete(dia, generated):
    result, steps, start = generated
    decoder = StreamingDecoder(dia.delay_pattern, dia.special_tokens["eos_token_id"], 20, 43, 16)
    sent = start
    for number, codes in enumerate(steps):
        chunks = decoder.push(codes[sent:])
        sent = codes.shape[0]
        if chunks:
            # 20 audio frames + 16 of right context, each complete 15 steps after it began.
            assert number + 1 == 20 + 16 + 15
            assert chunks[0].keep_samples == 20 * SAMPLES_PER_FRAME
            break
    else:
        pytest.fail("no chunk before the end")


async def test_a_generation_started_over_is_streamed_from_its_start_or_fails():
    """A request of a failed step is generated again alone: a stream whose caller has had no audio
    yet follows the new take (after a marker that drops the first); one that has fails, never
    splicing two takes."""
    feed = FrameFeed(asyncio.get_running_loop())
    prompt_frames, codebooks = 5, 9
    first, second = torch.arange(20 * codebooks).reshape(20, codebooks), -torch.arange(20 * codebooks).reshape(20, codebooks)
    feed(first[:prompt_frames], prompt_frames)  # the first step: prompt only, no audio yet
    feed(first[:4], prompt_frames)  # started over before any frame: nothing to drop
    for length in range(prompt_frames + 1, 9):
        feed(first[:length], prompt_frames)
    for length in range(prompt_frames + 1, 8):  # started over after frames were queued, none sent
        feed(second[:length], prompt_frames)
    await asyncio.sleep(0)  # the queue is filled from the loop
    queued = [feed.queue.get_nowait() for _ in range(feed.queue.qsize())]
    marker = next(n for n, item in enumerate(queued) if item is STARTED_OVER)
    assert sum(item is STARTED_OVER for item in queued) == 1
    assert torch.equal(torch.cat(queued[:marker]), first[prompt_frames:8])
    assert torch.equal(torch.cat(queued[marker + 1 :]), second[prompt_frames:7])
    feed.audio_sent = True  # a chunk of the second take went to the caller
    with pytest.raises(StreamRestarted):
        feed(first[: prompt_frames + 1], prompt_frames)


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.5, 2.0])
def test_tempo_as_it_flows_matches_the_transcode_services_change_of_speed(factor):
    rng = np.random.default_rng(3)
    t = np.arange(44100 * 2) / 44100
    samples = to_int16(0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size))
    whole = atempo(Pcm(samples), factor).samples
    tempo = StreamingTempo(factor)
    pieces = [tempo.push(samples[i : i + 22016]) for i in range(0, samples.size, 22016)]  # 43-frame chunks
    streamed = np.concatenate(pieces + [tempo.finish()])
    assert streamed.size == whole.size == round(samples.size / factor)
    assert snr_db(whole.astype(float), streamed.astype(float)) >= MIN_SNR_DB


# --- through the mesh's synth process -------------------------------------------------------


async def collect(call) -> list:
    return [message async for message in call]


def stream_request(**settings) -> synth_pb2.StreamSynthesizeRequest:
    return synth_pb2.StreamSynthesizeRequest(synthesis=request(**settings).synthesis)


async def test_stream_synthesize_sends_chunks_that_join_into_the_synthesized_audio(synth):
    whole, messages = await asyncio.gather(
        synth.Synthesize(request(seed=21, max_new_tokens=300)),
        collect(synth.StreamSynthesize(stream_request(seed=21, max_new_tokens=300))),
    )
    assert [m.chunk_index for m in messages] == list(range(len(messages)))
    assert [m.last for m in messages] == [False] * (len(messages) - 1) + [True]
    assert len(messages) >= 4 and all(m.sample_rate == SAMPLE_RATE for m in messages)
    # The first chunk is SYNTH_STREAM_FIRST_CHUNK_FRAMES (43) frames: half a second.
    assert len(messages[0].pcm) // 2 == 43 * SAMPLES_PER_FRAME
    streamed = np.frombuffer(b"".join(m.pcm for m in messages), dtype="<i2").astype(float)
    expected = wav_samples(whole.wav).astype(float)
    assert streamed.size == expected.size
    assert snr_db(expected, streamed) >= MIN_SNR_DB
    last = messages[-1]
    assert (last.seed, last.generated_frames, last.model) == (21, whole.generated_frames, "tiny-random")
    assert last.duration_seconds == pytest.approx(whole.duration_seconds)


@pytest.mark.parametrize("speed", [0.5, 2.0])
async def test_speed_factor_is_applied_as_the_stream_flows(synth, speed):
    whole, messages = await asyncio.gather(
        synth.Synthesize(request(seed=22, max_new_tokens=200, speed_factor=speed)),
        collect(synth.StreamSynthesize(stream_request(seed=22, max_new_tokens=200, speed_factor=speed))),
    )
    streamed = np.frombuffer(b"".join(m.pcm for m in messages), dtype="<i2").astype(float)
    expected = wav_samples(whole.wav).astype(float)
    assert streamed.size == expected.size == round(audio_samples_for(200) / speed)
    assert snr_db(expected, streamed) >= MIN_SNR_DB
    assert len(messages) > 2


async def test_a_stream_refuses_what_synthesize_refuses(synth):
    error = await error_of(collect(synth.StreamSynthesize(stream_request(script="", seed=1))))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.param == "script"


async def test_a_cancelled_stream_stops_its_generation(synth):
    """3072 frames (the most Dia's decoder holds) keep the tiny model busy for many seconds;
    cancelled, the provider is idle at once."""
    call = synth.StreamSynthesize(stream_request(seed=23, max_new_tokens=3072))
    await call.read()
    call.cancel()
    deadline = asyncio.get_running_loop().time() + 5
    while (await synth.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider.load:
        assert asyncio.get_running_loop().time() < deadline, "the generation ran on after its caller left"
        await asyncio.sleep(0.05)


# --- a step that fails under a stream: StreamSynthesize in process, the tiny model made to raise ------------


@pytest.fixture
async def synth_in_process(dia):
    """The SynthService on the session's loaded model, in this process (no heartbeats): its streams can meet faults."""
    from services.synth.service import Synth

    service = Synth()
    service.dia = dia
    service.engine.start(dia)
    yield service
    await service.engine.close()


async def test_a_stream_whose_step_fails_before_its_first_chunk_sends_the_same_audio(
    synth_in_process, monkeypatch
):
    asked = stream_request(seed=41, max_new_tokens=150, temperature=0.0)
    expected = await collect(synth_in_process.StreamSynthesize(asked, None))
    raised = fail_decode_steps(monkeypatch, lambda call, position: call == 5)  # the first chunk is ~74 steps in
    messages = await collect(synth_in_process.StreamSynthesize(asked, None))
    assert raised == [5]
    assert [m.pcm for m in messages] == [m.pcm for m in expected]
    assert messages[-1].generated_frames == expected[-1].generated_frames == 150


async def test_a_stream_whose_step_fails_after_a_chunk_went_out_ends_with_an_error(
    synth_in_process, monkeypatch
):
    armed = [False]
    raised = fail_decode_steps(monkeypatch, lambda call, position: armed[0] and not raised)
    stream = synth_in_process.StreamSynthesize(stream_request(seed=42, max_new_tokens=400, temperature=0.0), None)
    first = await stream.__anext__()
    assert first.chunk_index == 0 and first.pcm
    armed[0] = True  # the next decode step fails; its retry would start the audio over
    with pytest.raises(ApiError) as caught:
        async for message in stream:
            assert not message.last
    assert raised and caught.value.reason == "GENERATION_FAILED" and "streamed" in caught.value.message
    assert synth_in_process.engine.load == 0
