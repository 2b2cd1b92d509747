"""Limits and start-up, on synth processes of the tests' own with their own settings."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from runtime.server import channel_options
from tests.synth.helpers import error_of, noise_wav, own_synth, request, serving_synth, wav_samples
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

TIGHT = {
    "SYNTH_MAX_QUEUE": "1",
    "SYNTH_MAX_BATCH_SIZE": "1",
    "SYNTH_MAX_NEW_TOKENS": "3000",
    "SYNTH_MAX_AUDIO_PROMPT_SECONDS": "1.0",
}


@pytest.fixture(scope="module")
async def tight(mesh):
    """A SynthService stub on a synth that runs one request and lets one wait."""
    async with contextlib.asynccontextmanager(serving_synth)(mesh, **TIGHT) as address:
        async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
            yield synth_pb2_grpc.SynthServiceStub(channel)


async def load_of(synth) -> int:
    return (await synth.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider.load


async def wait_for_load(synth, load: int) -> None:
    async with asyncio.timeout(60):  # a guard against hanging, not a performance bound
        while await load_of(synth) != load:
            await asyncio.sleep(0.01)


async def test_with_one_running_and_one_waiting_the_next_request_is_refused_as_busy(tight):
    info = (await tight.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider
    assert info.capacity == 1
    # Long generations, so both are still there while the third arrives; they are cancelled after.
    running = asyncio.ensure_future(tight.Synthesize(request(max_new_tokens=3000)))
    await wait_for_load(tight, 1)
    waiting = asyncio.ensure_future(tight.Synthesize(request(max_new_tokens=3000)))
    await wait_for_load(tight, 2)

    error = await error_of(tight.Synthesize(request()))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SYNTH_BUSY")

    running.cancel()
    waiting.cancel()
    await wait_for_load(tight, 0)  # callers that leave free the queue and stop their generation
    reply = await tight.Synthesize(request(max_new_tokens=17))
    assert reply.generated_frames == 17


async def test_max_new_tokens_up_to_the_configured_limit(tight):
    error = await error_of(tight.Synthesize(request(max_new_tokens=3001)))
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "max_new_tokens")
    assert "3000" in error.message


async def test_a_prompt_up_to_the_configured_length_is_used_and_a_longer_one_refused(tight):
    transcript = "[S1] The way I talk."
    reply = await tight.Synthesize(request(prompt=(noise_wav(1.0), transcript)))
    assert wav_samples(reply.wav).size == (reply.generated_frames - 16) * 512
    error = await error_of(tight.Synthesize(request(prompt=(noise_wav(1.02), transcript))))
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_TOO_LONG", "audio_prompt.wav"
    )


async def test_a_model_that_cannot_load_ends_the_process_with_a_clear_message(mesh):
    # The real loading path with a hub id, offline: it fails at once instead of after network timeouts.
    async with own_synth(mesh, DIA_MODEL="nari-labs/Dia-1.6B-0626", HF_HUB_OFFLINE="1") as process:
        with pytest.raises(RuntimeError, match="synth exited with code 1") as caught:
            await process.wait_serving("synth", timeout=120)
    message = str(caught.value)
    assert "could not load Dia from 'nari-labs/Dia-1.6B-0626'" in message
    assert "DIA_MODEL=tiny-random" in message
