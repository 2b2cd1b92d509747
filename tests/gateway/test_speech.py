"""POST /v1/audio/speech (OpenAI's speech endpoint) end to end through the real
mesh with the tiny random-weight Dia, plus the endpoint's own rules as units.

The tiny model always generates exactly max_new_tokens frames, so the
durations compared here are exact functions of the request."""

from __future__ import annotations

import io
import uuid
import wave

import aiohttp
import grpc
import pytest

from runtime.server import channel_options
from services.gateway.dialects.openai import speech
from tests.gateway.conftest import FOX, HELLO, Account, assert_error, created, make_key, upload_form, wait_for_models
from tests.transcode.clips import probe
from voice.openai.v1 import speech_pb2, speech_pb2_grpc

SPEECH = "/v1/audio/speech"
# Short enough for the least max_new_tokens (256 frames, about a second of work for the tiny model).
SENTENCE = "Hello there."
HELLO_TRANSCRIPT = "Hello world, this is a voice sample for testing."
FOX_TRANSCRIPT = "The quick brown fox jumps over the lazy dog."
# What an OpenAI SDK's response_format gives: (Content-Type, container and codec as FFmpeg names them).
ENCODED_FORMATS = {
    "mp3": ("audio/mpeg", "mp3", "mp3"),
    "opus": ("audio/ogg", "ogg", "opus"),
    "aac": ("audio/aac", "aac", "aac"),
    "flac": ("audio/flac", "flac", "flac"),
    "wav": ("audio/wav", "wav", "pcm_s16le"),
}


# --- the endpoint's rules, as units ----------------------------------------------------


def test_max_new_tokens_follows_the_input_length_within_the_public_range():
    assert speech.frame_budget("a" * 21, 12) == 256  # 252 frames: the least the public API takes
    assert speech.frame_budget("a" * 22, 12) == 264
    assert speech.frame_budget("a" * 341, 12) == 4092
    assert speech.frame_budget("a" * 342, 12) == 4096  # 4104 frames: capped at the most
    assert speech.frame_budget("a" * 3000, 12) == 4096
    # What is said counts, not the whitespace and control characters that are dropped.
    assert speech.frame_budget("  a \n\n\t b\x00 " + " " * 500, 100) == 300


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", ""])
def test_openais_model_names_auto_select(model):
    given = speech_pb2.SpeechSpec(model=model, input=SENTENCE)
    assert speech.generation_spec(given, None, 12).model == ""


def test_the_speech_request_as_a_generation():
    given = speech_pb2.SpeechSpec(model="tiny-random", input=SENTENCE, speed=1.5)
    translated = speech.generation_spec(given, None, 12)
    assert (translated.model, translated.input, translated.speed_factor) == ("tiny-random", SENTENCE, 1.5)
    assert translated.max_new_tokens == 256
    assert not translated.speakers  # no voice found: no cloning
    assert speech.generation_spec(given, 7, 12).speakers == {"S1": 7}  # the voice found is cloned as S1
    # Left out, OpenAI's default speed (1.0) is the generation's.
    assert speech.generation_spec(speech_pb2.SpeechSpec(input=SENTENCE), None, 12).speed_factor == 1.0


# --- against the mesh -----------------------------------------------------------------


@pytest.fixture(scope="module")
async def dora(key_env, http) -> Account:
    """An account of this module's own: its library and history hold only what the module made."""
    name = f"dora-{uuid.uuid4().hex[:8]}"
    account = Account(name, make_key(name, key_env))
    await wait_for_models(http, account)  # the mesh's synth registers shortly after the gateway is up
    return account


@pytest.fixture(scope="module")
async def voices(http, dora) -> dict[str, int]:
    """dora's library: two samples named Narrator, a default one, one without transcript."""
    older = await created(await upload_form(http, dora, HELLO, "Narrator", transcript=HELLO_TRANSCRIPT))
    newer = await created(await upload_form(http, dora, FOX, "Narrator", transcript=FOX_TRANSCRIPT))
    default = await created(
        await upload_form(http, dora, HELLO, "Host", transcript=HELLO_TRANSCRIPT, is_default="true")
    )
    mute = await created(await upload_form(http, dora, FOX, "Mute", transcript="words"))
    response = await http.patch(f"/v1/voice/samples/{mute['id']}", json={"transcript": ""}, headers=dora.headers)
    assert response.status == 200 and (await response.json())["transcript"] == ""
    return {"older": older["id"], "newer": newer["id"], "default": default["id"], "mute": mute["id"]}


@pytest.fixture(scope="module")
async def eve(key_env, http) -> tuple[Account, int]:
    """Another account, whose one sample is not its default; and that sample's id."""
    name = f"eve-{uuid.uuid4().hex[:8]}"
    account = Account(name, make_key(name, key_env))
    sample = await created(await upload_form(http, account, FOX, "Eve", transcript=FOX_TRANSCRIPT))
    return account, sample["id"]


async def speak(http, account: Account, **body) -> aiohttp.ClientResponse:
    body.setdefault("model", "tts-1")
    body.setdefault("input", SENTENCE)
    return await http.post(SPEECH, json=body, headers=account.headers)


async def audio_of(response: aiohttp.ClientResponse, content_type: str) -> bytes:
    if response.status != 200:
        pytest.fail(f"speech failed: {response.status} {await response.text()}")
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Generation-Id"].startswith("gen_")
    return await response.read()


async def generation(http, account: Account, generation_id: str) -> dict:
    response = await http.get(f"/v1/voice/generations/{generation_id}", headers=account.headers)
    body = await response.json()
    assert response.status == 200, body
    return body


async def stored(http, account: Account, response: aiohttp.ClientResponse) -> dict:
    return await generation(http, account, response.headers["X-Generation-Id"])


@pytest.mark.parametrize("response_format", ENCODED_FORMATS)
async def test_each_response_format_is_audio_of_that_format(http, dora, response_format):
    content_type, container, codec = ENCODED_FORMATS[response_format]
    response = await speak(http, dora, response_format=response_format)
    audio = await audio_of(response, content_type)
    found = probe(audio)
    assert found[:2] == (container, codec) and found[3] == 1
    record = await stored(http, dora, response)
    assert record["status"] == "succeeded"
    # Lossy codecs pad a frame or so.
    assert found[4] == pytest.approx(record["audio_duration_seconds"], abs=0.05)


async def test_pcm_is_raw_16_bit_samples_at_24_khz_like_openais(http, dora):
    response = await speak(http, dora, response_format="pcm")
    pcm = await audio_of(response, "audio/pcm")
    assert not pcm.startswith(b"RIFF") and len(pcm) % 2 == 0
    # The history keeps the generation's 44.1 kHz WAV: the same audio, as long.
    wav = await http.get(f"/v1/voice/generations/{response.headers['X-Generation-Id']}/audio", headers=dora.headers)
    with wave.open(io.BytesIO(await wav.read())) as reader:
        wav_seconds = reader.getnframes() / reader.getframerate()
    assert len(pcm) / 2 / 24000 == pytest.approx(wav_seconds, abs=0.001)


async def test_without_response_format_it_is_mp3_as_openais(http, dora):
    audio = await audio_of(await speak(http, dora), "audio/mpeg")
    assert probe(audio)[:2] == ("mp3", "mp3")


async def test_an_unknown_response_format_is_invalid_parameter(http, dora):
    error = await assert_error(await speak(http, dora, response_format="ogg"), 400, "invalid_parameter", "response_format")
    assert "mp3, opus, aac, flac, wav, pcm" in error["message"]


# --- voice ---------------------------------------------------------------------------


async def test_a_voice_by_id_clones_that_sample(http, dora, voices):
    response = await speak(http, dora, voice=str(voices["older"]))
    await audio_of(response, "audio/mpeg")
    assert (await stored(http, dora, response))["speakers"] == {"S1": voices["older"]}


async def test_a_voice_by_speaker_name_clones_the_newest_sample_of_that_name(http, dora, voices):
    response = await speak(http, dora, voice="Narrator")
    await audio_of(response, "audio/mpeg")
    assert (await stored(http, dora, response))["speakers"] == {"S1": voices["newer"]}


async def test_without_voice_the_default_sample_is_cloned(http, dora, voices):
    response = await speak(http, dora)
    await audio_of(response, "audio/mpeg")
    assert (await stored(http, dora, response))["speakers"] == {"S1": voices["default"]}


async def test_without_voice_and_without_a_default_sample_nothing_is_cloned(http, eve):
    account, _ = eve
    response = await speak(http, account, voice="")
    await audio_of(response, "audio/mpeg")
    assert (await stored(http, account, response))["speakers"] == {}


@pytest.mark.parametrize("voice", ["alloy", "narrator", "Narrator ", "987654321"])
async def test_a_voice_that_names_no_sample_of_the_caller_is_invalid_voice_sample(http, dora, voices, voice):
    error = await assert_error(await speak(http, dora, voice=voice), 400, "invalid_voice_sample", "voice")
    assert "speaker_name" in error["message"] and repr(voice) in error["message"]


async def test_another_accounts_sample_is_invalid_voice_sample(http, dora, eve):
    _, eves_sample = eve
    await assert_error(await speak(http, dora, voice=str(eves_sample)), 400, "invalid_voice_sample", "voice")


async def test_a_voice_without_transcript_is_missing_transcript(http, dora, voices):
    error = await assert_error(await speak(http, dora, voice="Mute"), 400, "missing_transcript", "voice")
    assert error["message"].startswith("voice: ") and "speakers" not in error["message"]


# --- speed, model, input --------------------------------------------------------------


async def test_speed_is_the_speed_factor_and_2_halves_the_duration(http, dora):
    durations = {}
    for speed in (1.0, 2.0, 0.5):  # the default and both ends of the range
        response = await speak(http, dora, voice="", speed=speed)
        await audio_of(response, "audio/mpeg")
        record = await stored(http, dora, response)
        assert record["parameters"]["speed_factor"] == speed
        durations[speed] = record["audio_duration_seconds"]
    assert durations[2.0] == pytest.approx(durations[1.0] / 2, abs=0.001)
    assert durations[0.5] == pytest.approx(durations[1.0] * 2, abs=0.001)


@pytest.mark.parametrize("speed", [0.4, 2.1, 0.25, 4.0])
async def test_speed_outside_0_5_to_2_is_invalid_parameter(http, dora, speed):
    error = await assert_error(await speak(http, dora, speed=speed), 400, "invalid_parameter", "speed")
    assert error["message"].startswith("speed must be between 0.5 and 2")


async def test_max_new_tokens_is_derived_from_the_input(http, dora):
    short = await speak(http, dora, voice="")
    await audio_of(short, "audio/mpeg")
    assert (await stored(http, dora, short))["parameters"]["max_new_tokens"] == 256
    text = "A sentence that is rather longer than the first."  # 48 characters: 576 frames
    longer = await speak(http, dora, voice="", input=text)
    await audio_of(longer, "audio/mpeg")
    record = await stored(http, dora, longer)
    assert record["parameters"]["max_new_tokens"] == 12 * len(text)
    assert record["input"] == text


async def test_a_model_id_from_the_list_is_used_and_an_unknown_one_is_no_provider(http, dora):
    response = await speak(http, dora, voice="", model="tiny-random")
    await audio_of(response, "audio/mpeg")
    assert (await stored(http, dora, response))["model"] == "tiny-random"
    error = await assert_error(await speak(http, dora, model="gpt-5-tts"), 404, "no_provider", "model")
    assert "gpt-5-tts" in error["message"]


async def test_input_follows_the_script_rules_of_generations(http, dora):
    await assert_error(await speak(http, dora, input=""), 400, "missing_input", "input")
    await assert_error(await speak(http, dora, input="[S2] Me first."), 400, "invalid_script", "input")
    await assert_error(await speak(http, dora, input="a" * 8193), 413, "request_too_large", "input")


async def test_an_unknown_field_is_named(http, dora):
    # OpenAI's fields are all known now (instructions, stream_format): one it does not have.
    error = await assert_error(await speak(http, dora, emotion="cheerful"), 400, "invalid_parameter", "emotion")
    assert "unknown field" in error["message"]


async def test_without_a_key_it_is_unauthorized(http):
    response = await http.post(SPEECH, json={"model": "tts-1", "input": SENTENCE, "voice": "alloy"})
    await assert_error(response, 401, "unauthorized")


# --- history and gRPC -------------------------------------------------------------------


async def test_every_admitted_request_is_in_the_history_with_how_it_ended_a_refused_one_is_not(http, dora, voices):
    succeeded = await speak(http, dora, voice="Narrator", response_format="wav")
    await audio_of(succeeded, "audio/wav")
    refused = await speak(http, dora, voice="alloy", input="Refused.")
    await assert_error(refused, 400, "invalid_voice_sample", "voice")
    assert "X-Generation-Id" not in refused.headers  # refused at the door: never stored
    unserved = await speak(http, dora, voice="Narrator", model="nobody/serves-this", input="Unserved.")
    await assert_error(unserved, 404, "no_provider", "model")
    listed = await http.get("/v1/voice/generations", params={"page_size": "2"}, headers=dora.headers)
    newest = (await listed.json())["generations"]
    assert [g["id"] for g in newest] == [unserved.headers["X-Generation-Id"], succeeded.headers["X-Generation-Id"]]
    assert (newest[0]["status"], newest[0]["error_type"], newest[0]["input"]) == ("failed", "no_provider", "Unserved.")
    assert "nobody/serves-this" in newest[0]["error_message"]
    assert (newest[1]["status"], newest[1]["speakers"], newest[1]["provider"] != "") == ("succeeded", {"S1": voices["newer"]}, True)


@pytest.fixture
async def stub(mesh):
    async with grpc.aio.insecure_channel(mesh.address("gateway"), options=channel_options()) as channel:
        yield speech_pb2_grpc.SpeechServiceStub(channel)


async def test_internal_clients_call_it_over_grpc_with_the_same_key(stub, dora, voices):
    bearer = (("authorization", f"Bearer {dora.key}"),)
    call = stub.CreateSpeech(
        speech_pb2.CreateSpeechRequest(speech=speech_pb2.SpeechSpec(model="tts-1", input=SENTENCE, voice="Host", response_format="flac")),
        metadata=bearer,
        timeout=300,
    )
    reply = await call
    assert reply.audio.content_type == "audio/flac" and probe(reply.audio.data)[1] == "flac"
    assert dict(await call.initial_metadata())["x-generation-id"].startswith("gen_")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateSpeech(speech_pb2.CreateSpeechRequest(speech=speech_pb2.SpeechSpec(input=SENTENCE)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    streaming = stub.StreamSpeech(speech_pb2.StreamSpeechRequest(speech=speech_pb2.SpeechSpec(input=SENTENCE)), metadata=(), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await streaming.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED



def test_the_encodings_are_the_response_formats_speech_proto_allows():
    from runtime import fields
    from voice.openai.v1 import speech_pb2

    declared = fields.rules(speech_pb2.SpeechSpec.DESCRIPTOR.fields_by_name["response_format"])
    assert list(speech.RESPONSE_FORMATS) == list(declared.one_of)
    assert speech.DEFAULT_RESPONSE_FORMAT == "mp3"
