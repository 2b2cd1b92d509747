"""Streamed generations end to end, through the real mesh (tiny random Dia): HTTP "stream": true,
OpenAI's stream_format "audio" and "sse" (with the openai SDK too), gRPC StreamGeneration and
StreamSpeech, and callers who go away.

"Before the generation ends" is told by the history, not by a clock: when the first bytes arrive
the generation must still be running."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import uuid
import wave

import grpc
import numpy as np
import openai
import pytest

from runtime.server import channel_options
from tests.gateway.conftest import Account, assert_error, make_key, wait_for_models
from tests.transcode.clips import probe
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc
from voice.openai.v1 import speech_pb2, speech_pb2_grpc

GENERATIONS = "/v1/voice/generations"
SPEECH = "/v1/audio/speech"
DIALOGUE = "[S1] Streaming is here. [S2] At last!"
# Long enough that the first half second leaves long before the end (the tiny model needs seconds).
LONG = 2048
UNKNOWN_LENGTH = 0xFFFFFFFF


@pytest.fixture(scope="module")
async def gus(key_env, http) -> Account:
    name = f"gus-{uuid.uuid4().hex[:8]}"
    account = Account(name, make_key(name, key_env))
    await wait_for_models(http, account)
    return account


async def stored(http, account: Account, generation_id: str) -> dict:
    response = await http.get(f"{GENERATIONS}/{generation_id}", headers=account.headers)
    assert response.status == 200
    return await response.json()


async def status_becomes(http, account: Account, generation_id: str, wanted: str, timeout: float = 60) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while (row := await stored(http, account, generation_id))["status"] != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"still {row['status']}, never {wanted}"
        await asyncio.sleep(0.1)
    return row


def samples_of(wav_bytes: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (44100, 1, 2)
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")


# --- POST /v1/voice/generations with "stream": true ------------------------------------------


async def test_a_streamed_generation_is_chunked_wav_that_starts_while_it_is_running(http, gus):
    body = {"input": DIALOGUE, "max_new_tokens": LONG, "stream": True}
    async with http.post(GENERATIONS, json=body, headers=gus.headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "audio/wav"
        assert response.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in response.headers
        generation_id = response.headers["X-Generation-Id"]
        first = await response.content.readany()
        assert (await stored(http, gus, generation_id))["status"] == "running"  # audio before the end
        rest = await response.read()
    streamed = first + rest
    riff, data = struct.unpack_from("<4sI", streamed)[1], struct.unpack_from("<I", streamed, 40)[0]
    assert streamed[:4] == b"RIFF" and streamed[36:40] == b"data" and (riff, data) == (UNKNOWN_LENGTH, UNKNOWN_LENGTH)
    row = await status_becomes(http, gus, generation_id, "succeeded")
    kept = await (await http.get(f"{GENERATIONS}/{generation_id}/audio", headers=gus.headers)).read()
    pcm = np.frombuffer(streamed[44:], dtype="<i2")
    assert np.array_equal(pcm, samples_of(kept))  # the history keeps what was streamed, as one WAV
    assert pcm.size == (LONG - 16) * 512
    assert row["audio_duration_seconds"] == pytest.approx(pcm.size / 44100)


async def test_a_streamed_request_is_checked_before_any_audio(http, gus):
    response = await http.post(GENERATIONS, json={"input": "[S2] Me first.", "stream": True}, headers=gus.headers)
    await assert_error(response, 400, "invalid_script", "input")
    response = await http.post(GENERATIONS, json={"input": DIALOGUE, "stream": "yes"}, headers=gus.headers)
    await assert_error(response, 400, "invalid_parameter", "stream")


async def test_a_client_that_closes_the_connection_cancels_its_generation(http, gus):
    body = {"input": DIALOGUE, "max_new_tokens": 3072, "stream": True}
    response = await http.post(GENERATIONS, json=body, headers=gus.headers)
    generation_id = response.headers["X-Generation-Id"]
    await response.content.readany()
    response.close()  # hangs up mid-stream
    row = await status_becomes(http, gus, generation_id, "canceled")
    assert row["error_type"] == "canceled" and row["end_time"]
    listed = await (await http.get(GENERATIONS, params={"status": "canceled"}, headers=gus.headers)).json()
    assert generation_id in [generation["id"] for generation in listed["generations"]]  # the history's filter knows it


# --- over gRPC ------------------------------------------------------------------------------


@pytest.fixture
async def channel(mesh):
    async with grpc.aio.insecure_channel(mesh.address("gateway"), options=channel_options()) as opened:
        yield opened


def bearer(account: Account) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {account.key}"),)


async def test_stream_generation_over_grpc_sends_wav_chunks_and_its_id(channel, http, gus):
    stub = generations_pb2_grpc.GenerationServiceStub(channel)
    call = stub.StreamGeneration(
        generations_pb2.StreamGenerationRequest(generation=generations_pb2.GenerationSpec(input=DIALOGUE, max_new_tokens=300)), metadata=bearer(gus)
    )
    chunks = [message.audio async for message in call]
    generation_id = dict(await call.initial_metadata())["x-generation-id"]
    assert len(chunks) > 2 and {chunk.content_type for chunk in chunks} == {"audio/wav"}
    whole = b"".join(chunk.data for chunk in chunks)
    kept = await (await http.get(f"{GENERATIONS}/{generation_id}/audio", headers=gus.headers)).read()
    assert np.array_equal(np.frombuffer(whole[44:], dtype="<i2"), samples_of(kept))


async def test_a_cancelled_rpc_stops_its_generation_and_is_recorded_canceled(channel, http, gus):
    stub = generations_pb2_grpc.GenerationServiceStub(channel)
    call = stub.StreamGeneration(
        generations_pb2.StreamGenerationRequest(generation=generations_pb2.GenerationSpec(input=DIALOGUE, max_new_tokens=3072)), metadata=bearer(gus)
    )
    await call.read()
    generation_id = dict(await call.initial_metadata())["x-generation-id"]
    call.cancel()
    await status_becomes(http, gus, generation_id, "canceled")


# --- OpenAI's stream_format ------------------------------------------------------------------


@pytest.mark.parametrize(
    "response_format, content_type, container",
    [
        ("mp3", "audio/mpeg", "mp3"),
        ("opus", "audio/ogg", "ogg"),
        ("aac", "audio/aac", "aac"),
        ("flac", "audio/flac", "flac"),
        ("wav", "audio/wav", "wav"),
        ("pcm", "audio/pcm", None),
    ],
)
async def test_stream_format_audio_sends_the_asked_format_in_chunks(http, gus, response_format, content_type, container):
    body = {"model": "tts-1", "input": "Hello there.", "response_format": response_format, "stream_format": "audio"}
    async with http.post(SPEECH, json=body, headers=gus.headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == content_type
        assert response.headers.get("Transfer-Encoding") == "chunked"
        data = await response.read()
    seconds = (256 - 16) * 512 / 44100  # the speech endpoint's least frame budget
    if container is None:
        assert len(data) // 2 == pytest.approx(seconds * 24000, abs=64)  # 16-bit at 24 kHz, as OpenAI's
    else:
        found, _, _, _, decoded = probe(data)
        assert found == container and decoded == pytest.approx(seconds, abs=0.08)


async def test_stream_format_sse_sends_openais_delta_and_done_events(http, gus):
    body = {"model": "tts-1", "input": "Hello there.", "response_format": "wav", "stream_format": "sse"}
    async with http.post(SPEECH, json=body, headers=gus.headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        text = (await response.read()).decode()
    events = [json.loads(block[len("data: ") :]) for block in text.split("\n\n") if block]
    assert [event["type"] for event in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) > 2 and events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"] == {"input_tokens": 12, "output_tokens": 256, "total_tokens": 268}
    audio = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    assert probe(audio)[0] == "wav"


async def test_a_bad_stream_format_is_refused(http, gus):
    response = await http.post(SPEECH, json={"input": "Hi.", "stream_format": "chunks"}, headers=gus.headers)
    await assert_error(response, 400, "invalid_parameter", "stream_format")


async def test_the_openai_sdk_gets_its_first_bytes_while_the_generation_runs(mesh, http, gus):
    client = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key=gus.key)
    text = "Streaming makes the first words audible at once. " * 3  # 12 frames a character: about 1800 frames
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="", input=text, response_format="pcm", stream_format="audio", instructions="Speak softly."
    ) as response:
        generation_id = response.headers["x-generation-id"]
        chunks = response.iter_bytes()
        first = await chunks.__anext__()
        assert first and (await stored(http, gus, generation_id))["status"] == "running"
        rest = b"".join([chunk async for chunk in chunks])
    assert len(first + rest) > 2 * len(first)
    assert (await status_becomes(http, gus, generation_id, "succeeded"))["status"] == "succeeded"


async def test_stream_speech_over_grpc(channel, gus):
    stub = speech_pb2_grpc.SpeechServiceStub(channel)
    request = speech_pb2.StreamSpeechRequest(
        speech=speech_pb2.SpeechSpec(
            input="Hello there.", response_format="mp3", stream_format="audio", instructions="Speak softly."
        )
    )
    chunks = [message.audio async for message in stub.StreamSpeech(request, metadata=bearer(gus))]
    assert {chunk.content_type for chunk in chunks} == {"audio/mpeg"}
    assert probe(b"".join(chunk.data for chunk in chunks))[0] == "mp3"
