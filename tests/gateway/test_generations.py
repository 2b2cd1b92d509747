"""POST /v1/voice/generations end to end, and the history and share URLs of
generations, through the real mesh (PostgreSQL, transcode, library, synth
with the tiny random-weight Dia, gateway as separate processes)."""

from __future__ import annotations

import asyncio
import io
import uuid
import wave

import aiohttp
import asyncpg
import grpc
import pytest

from runtime import objects
from runtime.errors import ApiError
from runtime.server import channel_options
from tests.conftest import provider_metadata
from tests.synth.helpers import metric
from tests.gateway.conftest import FOX, HELLO, Account, assert_error, created, extra_gateway, make_key, upload_form, wait_for_models
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc, providers_pb2, providers_pb2_grpc
from voice.synth.v1 import synth_pb2

# 256 frames is the least the public API allows; the tiny model makes them in about a second.
FRAMES = 256
DIALOGUE = "[S1] Hello! Welcome to the show. [S2] Thanks for having me."
GENERATIONS = "/v1/voice/generations"


def wav_layout(data: bytes) -> tuple[int, int, int, int]:
    """(sample rate, channels, bits per sample, frames)."""
    with wave.open(io.BytesIO(data)) as reader:
        return reader.getframerate(), reader.getnchannels(), 8 * reader.getsampwidth(), reader.getnframes()


@pytest.fixture(scope="module")
async def carol(key_env) -> Account:
    """An account of this module's own, so that its history holds only what the module made."""
    name = f"carol-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


@pytest.fixture(scope="module", autouse=True)
async def provider(http, carol):
    """The mesh's synth registers itself with heartbeats, shortly after the gateway is up."""
    await wait_for_models(http, carol)


@pytest.fixture(scope="module")
async def voices(http, carol) -> dict[str, int]:
    """Two samples of carol's library: speaker ids for S1 and S2."""
    hello = await created(await upload_form(http, carol, HELLO, "Host", transcript="Hello world, this is a voice sample for testing."))
    fox = await created(await upload_form(http, carol, FOX, "Guest", transcript="The quick brown fox jumps over the lazy dog."))
    return {"S1": hello["id"], "S2": fox["id"]}


async def generate(http, account: Account, **body) -> aiohttp.ClientResponse:
    body.setdefault("input", DIALOGUE)
    body.setdefault("max_new_tokens", FRAMES)
    return await http.post(GENERATIONS, json=body, headers=account.headers)


async def audio_of(response: aiohttp.ClientResponse) -> bytes:
    if response.status != 200:
        pytest.fail(f"generation failed: {response.status} {await response.text()}")
    assert response.headers["Content-Type"] == "audio/wav"
    return await response.read()


async def generation(http, account: Account, generation_id: str) -> dict:
    response = await http.get(f"{GENERATIONS}/{generation_id}", headers=account.headers)
    body = await response.json()
    assert response.status == 200, body
    return body


# --- generating ---------------------------------------------------------------


async def test_a_dialogue_with_both_speakers_cloned_is_a_44_1_khz_wav_with_its_generation_id(http, carol, voices):
    response = await generate(http, carol, speakers=voices, seed=7)
    audio = await audio_of(response)
    rate, channels, bits, frames = wav_layout(audio)
    assert (rate, channels, bits) == (44100, 1, 16)
    assert frames > 0

    generation_id = response.headers["X-Generation-Id"]
    assert generation_id.startswith("gen_")
    stored = await generation(http, carol, generation_id)
    assert stored["status"] == "succeeded"
    assert stored["speakers"] == voices
    assert stored["model"] == "tiny-random" and stored["provider"]
    assert stored["parameters"] == {
        "cfg_scale": 3.0,
        "temperature": 1.8,
        "top_p": 0.95,
        "cfg_filter_top_k": 45,
        "speed_factor": 1.0,
        "max_new_tokens": FRAMES,
        "seed": 7,
        "max_audio_prompt_seconds": 10.0,
        "best_of": 1,
    }
    assert stored["audio_duration_seconds"] == pytest.approx(frames / 44100, abs=1e-3)
    assert stored["visibility"] == "private" and stored["share_url"] == ""
    assert stored["create_time"] <= stored["start_time"] <= stored["end_time"]

    again = await http.get(f"{GENERATIONS}/{generation_id}/audio", headers=carol.headers)
    assert (again.status, again.headers["Content-Type"], await again.read()) == (200, "audio/wav", audio)


async def test_the_seed_of_a_random_generation_repeats_it_exactly(http, carol, voices):
    short_prompt = dict(speakers=voices, max_audio_prompt_seconds=2)  # less to encode: quicker
    first = await generate(http, carol, **short_prompt)
    first_audio = await audio_of(first)
    seed = (await generation(http, carol, first.headers["X-Generation-Id"]))["parameters"]["seed"]
    assert seed >= 0  # the seed that was drawn, not -1
    repeated = await audio_of(await generate(http, carol, seed=seed, **short_prompt))
    assert repeated == first_audio
    other = await audio_of(await generate(http, carol, seed=seed + 1, **short_prompt))
    assert other != first_audio


async def test_a_monologue_without_cloning_is_generated_too(http, carol):
    audio = await audio_of(await generate(http, carol, input="Just me talking. (laughs)"))
    assert wav_layout(audio)[3] > 0


# --- the spec's error table, each from a real request ------------------------------


async def test_no_input_is_missing_input(http, carol):
    response = await http.post(GENERATIONS, json={"speakers": {}}, headers=carol.headers)
    await assert_error(response, 400, "missing_input", "input")


@pytest.mark.parametrize("script", ["[S2] I cannot go first.", "[S1] Hi. [S3] Me too."])
async def test_a_script_against_the_rules_is_invalid_script(http, carol, script):
    await assert_error(await generate(http, carol, input=script), 400, "invalid_script", "input")


async def test_a_sample_that_does_not_exist_or_is_anothers_is_invalid_voice_sample(http, carol, accounts):
    alice, _ = accounts
    alices = await created(await upload_form(http, alice, HELLO, "Alice", transcript="hello"))
    response = await generate(http, carol, speakers={"S1": 987654321})
    await assert_error(response, 400, "invalid_voice_sample", "speakers.S1")
    response = await generate(http, carol, speakers={"S1": alices["id"]})
    await assert_error(response, 400, "invalid_voice_sample", "speakers.S1")


async def test_a_sample_without_transcript_is_missing_transcript(http, carol, voices):
    silent = await created(await upload_form(http, carol, FOX, "Mute", transcript="words"))
    response = await http.patch(f"/v1/voice/samples/{silent['id']}", json={"transcript": ""}, headers=carol.headers)
    assert response.status == 200 and (await response.json())["transcript"] == ""
    response = await generate(http, carol, speakers={"S1": voices["S1"], "S2": silent["id"]})
    await assert_error(response, 400, "missing_transcript", "speakers.S2")


async def test_a_sample_whose_stored_audio_was_damaged_is_audio_decode_failed(
    http, carol, voices, database, object_server
):
    # The library stores only audio that decodes, so the damage is done at rest,
    # as a bad disk or a bad restore would; the request itself is a real one.
    damaged = await created(await upload_form(http, carol, FOX, "Damaged", transcript="words"))
    connection = await asyncpg.connect(database.url)
    try:
        key = await connection.fetchval("SELECT normalized_key FROM library.samples WHERE id = $1", damaged["id"])
    finally:
        await connection.close()
    async with objects.ObjectStore(object_server.settings) as store:
        await store.put(key, b"RIFF\x00garbage")
    response = await generate(http, carol, speakers={"S1": voices["S1"], "S2": damaged["id"]})
    await assert_error(response, 400, "audio_decode_failed", "speakers.S2")


async def test_input_over_the_character_limit_is_request_too_large(http, carol):
    response = await generate(http, carol, input="[S1] " + "a" * 8188)  # 8193 characters
    await assert_error(response, 413, "request_too_large", "input")


async def test_a_script_longer_than_the_model_reads_is_generated_in_chunks(http, carol):
    # 1,500 characters; Dia's text encoder reads 1,024 bytes: two generations, one answer.
    response = await generate(http, carol, input="[S1] " + "la " * 498)
    assert response.status == 200, await response.text()
    row = await generation(http, carol, response.headers["X-Generation-Id"])
    assert (row["status"], row["chunks"]) == ("succeeded", 2)


async def test_a_model_nobody_serves_is_no_provider(http, carol):
    error = await assert_error(await generate(http, carol, model="nobody/serves-this"), 404, "no_provider", "model")
    assert "nobody/serves-this" in error["message"]


async def test_a_model_without_voice_cloning_is_no_provider(http, carol, mesh):
    # A provider registered (as by its heartbeat) with a model that cannot clone; never called.
    registry = providers_pb2_grpc.ProviderRegistryServiceStub
    provider = synth_pb2.ProviderInfo(
        provider_id=f"speech-only-{uuid.uuid4().hex[:6]}",
        address="127.0.0.1:1",
        models=[synth_pb2.Model(id="speech-only", features=["dialogue"])],
        capacity=1,
    )
    async with grpc.aio.insecure_channel(mesh.address("gateway")) as channel:
        credential = provider_metadata(mesh.env, provider.provider_id)
        await registry(channel).Heartbeat(
            providers_pb2.HeartbeatRequest(provider=provider), metadata=credential, timeout=10
        )
        try:
            error = await assert_error(await generate(http, carol, model="speech-only"), 404, "no_provider", "model")
            assert "voice-cloning" in error["message"]
        finally:
            await registry(channel).DeregisterProvider(
                providers_pb2.DeregisterProviderRequest(provider_id=provider.provider_id),
                metadata=credential,
                timeout=10,
            )


async def test_models_list_the_tiny_model_with_its_features(http, carol):
    cloning = await wait_for_models(http, carol)
    assert {"voice-cloning", "dialogue"} <= set(cloning["tiny-random"]["features"])
    assert cloning["tiny-random"]["providers"] >= 1


async def test_a_generation_past_the_synth_deadline_is_upstream_error(mesh, carol):
    async with extra_gateway(mesh, GATEWAY_SYNTH_TIMEOUT_SECONDS="1") as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            # 3072 frames (the most Dia's decoder holds) take the tiny model on a CPU several seconds.
            response = await generate(http, carol, input="[S1] A long one.", max_new_tokens=3072)
            error = await assert_error(response, 502, "upstream_error")
            assert "within 1 s" in error["message"]
            stored = await generation(http, carol, response.headers["X-Generation-Id"])
            assert (stored["status"], stored["error_type"]) == ("failed", "upstream_error")


async def test_only_s1_and_s2_can_be_cloned(http, carol, voices):
    response = await generate(http, carol, speakers={"S1": voices["S1"], "S3": voices["S2"]})
    await assert_error(response, 400, "invalid_parameter", "speakers")


# --- parameters at their edges --------------------------------------------------

# Each field just outside its range (the public spec's table), and a value of a wrong type.
OUT_OF_RANGE = [
    ("cfg_scale", 0.99),
    ("cfg_scale", 5.01),
    ("temperature", 0.09),
    ("temperature", 2.01),
    ("top_p", 0.09),
    ("top_p", 1.01),
    ("cfg_filter_top_k", 0),
    ("cfg_filter_top_k", 101),
    ("speed_factor", 0.49),
    ("speed_factor", 2.01),
    ("max_new_tokens", 255),
    ("max_new_tokens", 4097),
    ("seed", -2),
    ("max_audio_prompt_seconds", 0.99),
    ("max_audio_prompt_seconds", 120.01),
    ("visibility", "secret"),
    ("collection", "c" * 101),
    ("cfg_scale", "high"),
    # A number sent as text: protobuf's JSON parser would take it, the API documents a number.
    ("temperature", "1.0"),
    ("max_new_tokens", "300"),
    ("seed", "7"),
    ("cfg_filter_top_k", 4.5),
    ("speakers", {"S1": "twelve"}),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
async def test_a_parameter_out_of_range_or_of_a_wrong_type_is_named(http, carol, field, value):
    response = await generate(http, carol, **{field: value})
    await assert_error(response, 400, "invalid_parameter", field)


async def test_an_unknown_field_is_named(http, carol):
    await assert_error(await generate(http, carol, voice="Alice"), 400, "invalid_parameter", "voice")


async def test_every_parameter_at_its_lowest_passes(http, carol, voices):
    lowest = dict(
        cfg_scale=1, temperature=0.1, top_p=0.1, cfg_filter_top_k=1, speed_factor=0.5,
        max_new_tokens=256, seed=0, max_audio_prompt_seconds=1,
    )
    response = await generate(http, carol, speakers=voices, collection="", **lowest)
    await audio_of(response)
    stored = await generation(http, carol, response.headers["X-Generation-Id"])
    assert stored["parameters"] == {
        **lowest, "cfg_scale": 1.0, "speed_factor": 0.5, "max_audio_prompt_seconds": 1.0, "best_of": 1
    }


async def test_every_parameter_at_its_highest_passes(http, carol, voices):
    # max_new_tokens at its highest (4096) is more than Dia's decoder holds: see
    # test_max_new_tokens_beyond_dias_decoder_positions_is_invalid_parameter.
    highest = dict(
        cfg_scale=5, temperature=2, top_p=1, cfg_filter_top_k=100, speed_factor=2,
        seed=2**62, max_audio_prompt_seconds=120,
    )
    response = await generate(http, carol, speakers=voices, collection="c" * 100, visibility="public", **highest)
    await audio_of(response)
    stored = await generation(http, carol, response.headers["X-Generation-Id"])
    assert stored["collection"] == "c" * 100 and stored["visibility"] == "public"
    assert stored["parameters"]["seed"] == 2**62


async def test_the_narrowest_guidance_filter_generates(http, carol):
    # cfg_filter_top_k=1 with guidance on left a channel no token to sample: 502 (found by fuzzing).
    await audio_of(await generate(http, carol, cfg_filter_top_k=1, cfg_scale=3))


@pytest.mark.parametrize("top_k", [1, 2])
async def test_the_narrowest_guidance_filters_generate_for_every_request_of_a_batch(http, carol, top_k):
    # Requests with the same settings that arrive together are generated in one batch: a
    # failure of one used to fail them all.
    responses = await asyncio.gather(
        *(generate(http, carol, input=f"[S1] Take {n}.", cfg_filter_top_k=top_k) for n in range(3))
    )
    for response in responses:
        assert wav_layout(await audio_of(response))[3] > 0


# --- Dia's 3072 decoder positions: the prompt's frames and max_new_tokens share them --------


async def test_max_new_tokens_up_to_the_public_4096_gets_what_dias_decoder_holds(http, carol):
    # The public range allows 4096; Dia's decoder holds 3072 frames: the request gets those.
    response = await generate(http, carol, max_new_tokens=4096, seed=5)
    audio = await audio_of(response)
    assert response.headers["X-Max-New-Tokens"] == "3072"
    stored = await generation(http, carol, response.headers["X-Generation-Id"])
    assert stored["parameters"]["max_new_tokens"] == 3072  # the history says what was used
    assert wav_layout(audio)[3] <= (3072 - 16) * 512  # never more audio than that allows


@pytest.mark.parametrize("stream", [False, True])
async def test_4096_with_two_cloned_voices_gets_what_fits_beside_their_prompt(http, carol, voices, stream):
    # Two 2.9 s samples and the gap: about 525 prompt frames, so about 2547 new ones fit.
    response = await generate(http, carol, speakers=voices, max_new_tokens=4096, seed=6, stream=stream)
    audio = await audio_of(response)
    used = int(response.headers["X-Max-New-Tokens"])
    assert 2500 < used < 2600, used
    stored = await generation(http, carol, response.headers["X-Generation-Id"])
    assert stored["status"] == "succeeded"
    assert stored["parameters"]["max_new_tokens"] == used
    if not stream:
        assert wav_layout(audio)[3] <= (used - 16) * 512


async def test_the_default_max_new_tokens_works_with_cloned_voices(http, carol, voices):
    """The published default (3072), sent as a generated client sends it, beside a voice prompt."""
    response = await generate(http, carol, speakers=voices, max_new_tokens=3072, seed=7)
    await audio_of(response)
    assert int(response.headers["X-Max-New-Tokens"]) < 3072


@pytest.fixture(scope="module")
async def short_input_gateway(mesh):
    async with extra_gateway(mesh, GATEWAY_MAX_INPUT_CHARS="40") as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as session:
            yield session


async def test_input_of_exactly_the_character_limit_is_generated(short_input_gateway, carol):
    text = "[S1] " + "a" * 35
    assert len(text) == 40
    await audio_of(await generate(short_input_gateway, carol, input=text))


async def test_input_one_character_over_the_limit_is_413(short_input_gateway, carol):
    response = await generate(short_input_gateway, carol, input="[S1] " + "a" * 36)
    error = await assert_error(response, 413, "request_too_large", "input")
    assert "40" in error["message"]


# --- history ----------------------------------------------------------------------


async def test_the_history_lists_every_admitted_request_newest_first_with_how_it_ended(http, key_env):
    name = f"dave-{uuid.uuid4().hex[:8]}"
    dave = Account(name, make_key(name, key_env))
    made = await generate(http, dave, input="[S1] One.", seed=1)
    await audio_of(made)
    refused = await generate(http, dave, input="[S2] Two.")
    unserved = await generate(http, dave, input="[S1] Three.", model="nobody/serves-this")
    failed = await generate(http, dave, input="[S1] Four.", model="nobody/serves-this-either")
    assert (refused.status, unserved.status, failed.status) == (400, 404, 404)
    # Refused at the door (its script breaks the rules): no id, nothing stored.
    assert "X-Generation-Id" not in refused.headers
    ids = [response.headers["X-Generation-Id"] for response in (failed, unserved, made)]

    response = await http.get(GENERATIONS, headers=dave.headers)
    listing = await response.json()
    assert response.status == 200, listing
    assert [g["id"] for g in listing["generations"]] == ids
    assert [(g["status"], g["error_type"], g["input"]) for g in listing["generations"]] == [
        ("failed", "no_provider", "[S1] Four."),
        ("failed", "no_provider", "[S1] Three."),
        ("succeeded", "", "[S1] One."),
    ]
    assert all(g["error_message"] for g in listing["generations"][:2])
    assert listing["next_page_token"] == ""

    first = await (await http.get(GENERATIONS, params={"page_size": "2"}, headers=dave.headers)).json()
    rest = await (
        await http.get(GENERATIONS, params={"page_size": "2", "page_token": first["next_page_token"]}, headers=dave.headers)
    ).json()
    assert [g["id"] for g in first["generations"] + rest["generations"]] == ids
    assert rest["next_page_token"] == ""


@pytest.mark.parametrize(("params", "param"), [({"page_size": "101"}, "page_size"), ({"page_token": "not-ours"}, "page_token")])
async def test_bad_page_parameters_are_named(http, carol, params, param):
    await assert_error(await http.get(GENERATIONS, params=params, headers=carol.headers), 400, "invalid_parameter", param)


async def test_a_page_of_the_most_generations_passes(http, carol):
    response = await http.get(GENERATIONS, params={"page_size": "100"}, headers=carol.headers)
    assert response.status == 200


async def test_another_accounts_generation_is_not_found(http, carol, accounts):
    _, bob = accounts
    response = await generate(http, carol, input="[S1] Mine.", visibility="unlisted")
    await audio_of(response)
    generation_id = response.headers["X-Generation-Id"]
    for path in (f"{GENERATIONS}/{generation_id}", f"{GENERATIONS}/{generation_id}/audio"):
        await assert_error(await http.get(path, headers=bob.headers), 404, "not_found")
    listing = await (await http.get(GENERATIONS, params={"page_size": "100"}, headers=bob.headers)).json()
    assert generation_id not in [g["id"] for g in listing["generations"]]


async def test_a_failed_generation_has_no_audio(http, carol):
    unserved = await generate(http, carol, input="[S1] Nobody serves me.", model="nobody/serves-this")
    assert unserved.status == 404
    response = await http.get(f"{GENERATIONS}/{unserved.headers['X-Generation-Id']}/audio", headers=carol.headers)
    await assert_error(response, 404, "not_found")


# --- share URLs -------------------------------------------------------------------


@pytest.mark.parametrize("visibility", ["unlisted", "public"])
async def test_a_shared_generation_plays_from_its_url_without_a_key(http, carol, mesh, visibility):
    response = await generate(http, carol, input="[S1] Share me.", visibility=visibility)
    audio = await audio_of(response)
    stored = await generation(http, carol, response.headers["X-Generation-Id"])
    assert stored["share_url"].startswith(f"{mesh.http_url}/v1/shared/generations/")
    async with aiohttp.ClientSession() as anonymous:
        shared = await anonymous.get(stored["share_url"])
        assert (shared.status, shared.headers["Content-Type"], await shared.read()) == (200, "audio/wav", audio)


async def share_token(mesh, generation_id: str) -> str:
    connection = await asyncpg.connect(mesh.env["DATABASE_URL"])
    try:
        return await connection.fetchval("SELECT share_token FROM gateway.generations WHERE id = $1", generation_id)
    finally:
        await connection.close()


async def test_a_private_generation_is_not_shared_even_by_its_token(http, carol, mesh):
    response = await generate(http, carol, input="[S1] Just for me.")
    await audio_of(response)
    generation_id = response.headers["X-Generation-Id"]
    assert (await generation(http, carol, generation_id))["share_url"] == ""
    token = await share_token(mesh, generation_id)
    for url in (f"/v1/shared/generations/{token}/audio", "/v1/shared/generations/made-up/audio"):
        await assert_error(await http.get(url), 404, "not_found")


async def test_a_private_generation_made_unlisted_plays_from_its_share_url_until_it_is_private_again(http, carol, mesh):
    response = await generate(http, carol, input="[S1] Share me later.")
    audio = await audio_of(response)
    generation_id = response.headers["X-Generation-Id"]
    path = f"{GENERATIONS}/{generation_id}"

    unlisted = await created(await http.patch(path, json={"visibility": "unlisted"}, headers=carol.headers))
    assert unlisted["visibility"] == "unlisted" and unlisted["status"] == "succeeded"
    assert unlisted["share_url"].startswith(f"{mesh.http_url}/v1/shared/generations/")
    assert (await generation(http, carol, generation_id))["share_url"] == unlisted["share_url"]
    async with aiohttp.ClientSession() as anonymous:
        shared = await anonymous.get(unlisted["share_url"])
        assert (shared.status, await shared.read()) == (200, audio)

        private = await created(await http.patch(path, json={"visibility": "private"}, headers=carol.headers))
        assert private["share_url"] == "" and private["collection"] == ""
        await assert_error(await anonymous.get(unlisted["share_url"]), 404, "not_found")

    # Present fields change, absent ones stay.
    filed = await created(await http.patch(path, json={"collection": "podcast"}, headers=carol.headers))
    assert (filed["collection"], filed["visibility"]) == ("podcast", "private")


async def test_changing_sharing_names_a_bad_field_and_keeps_anothers_generation_unknown(http, carol, accounts):
    response = await generate(http, carol, input="[S1] Not yours.")
    await audio_of(response)
    path = f"{GENERATIONS}/{response.headers['X-Generation-Id']}"
    await assert_error(await http.patch(path, json={"visibility": "everyone"}, headers=carol.headers), 400, "invalid_parameter", "visibility")
    await assert_error(await http.patch(path, json={"collection": "x" * 10_000}, headers=carol.headers), 400, "invalid_parameter", "collection")
    await assert_error(await http.patch(path, json={"status": "failed"}, headers=carol.headers), 400, "invalid_parameter", "status")
    await assert_error(await http.patch(path, json={"visibility": "public"}, headers=accounts[1].headers), 404, "not_found")
    await assert_error(await http.patch(f"{GENERATIONS}/gen_made_up", json={"visibility": "public"}, headers=carol.headers), 404, "not_found")
    assert (await (await http.get(path, headers=carol.headers)).json())["visibility"] == "private"


async def test_the_history_filters_by_status_and_collection(http, key_env):
    name = f"dora-{uuid.uuid4().hex[:8]}"
    dora = Account(name, make_key(name, key_env))
    done = await generate(http, dora, input="[S1] One.", collection="show")
    await audio_of(done)
    other = await generate(http, dora, input="[S1] Two.", collection="other")
    await audio_of(other)
    failed = await generate(http, dora, input="[S1] Three.", collection="show", model="nobody-serves-this")
    assert failed.status == 404

    async def listed(**params) -> list[str]:
        body = await created(await http.get(GENERATIONS, params=params, headers=dora.headers))
        return [item["id"] for item in body["generations"]]

    ids = {response.headers["X-Generation-Id"] for response in (done, other, failed)}
    assert set(await listed()) == ids
    assert await listed(collection="show") == [failed.headers["X-Generation-Id"], done.headers["X-Generation-Id"]]
    assert await listed(status="failed") == [failed.headers["X-Generation-Id"]]
    assert await listed(status="succeeded", collection="show") == [done.headers["X-Generation-Id"]]
    assert await listed(status="running") == []
    # A filtered page's token leads to the next page of the same filter.
    first = await created(await http.get(GENERATIONS, params={"collection": "show", "page_size": 1}, headers=dora.headers))
    second = await created(await http.get(
        GENERATIONS, params={"collection": "show", "page_size": 1, "page_token": first["next_page_token"]}, headers=dora.headers
    ))
    assert [item["id"] for item in first["generations"] + second["generations"]] == await listed(collection="show")
    assert second["next_page_token"] == ""
    await assert_error(await http.get(GENERATIONS, params={"status": "done"}, headers=dora.headers), 400, "invalid_parameter", "status")


async def test_every_other_endpoint_still_needs_a_key(http):
    await assert_error(await http.get(GENERATIONS), 401, "unauthorized")
    await assert_error(await http.post(GENERATIONS, json={"input": "hi"}), 401, "unauthorized")
    await assert_error(await http.get("/v1/shared/nothing-here"), 401, "unauthorized")


# --- over gRPC ----------------------------------------------------------------------


@pytest.fixture
async def stub(mesh):
    async with grpc.aio.insecure_channel(mesh.address("gateway"), options=channel_options()) as channel:
        yield generations_pb2_grpc.GenerationServiceStub(channel)


def bearer(account: Account) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {account.key}"),)


async def test_internal_clients_generate_over_grpc_with_the_same_key(stub, carol):
    call = stub.CreateGeneration(
        generations_pb2.CreateGenerationRequest(generation=generations_pb2.GenerationSpec(input="[S1] Over gRPC.", max_new_tokens=FRAMES, seed=3)),
        metadata=bearer(carol),
        timeout=300,
    )
    reply = await call
    assert dict(await call.initial_metadata())["x-generation-id"] == reply.generation.id
    assert (reply.generation.status, reply.audio.content_type) == ("succeeded", "audio/wav")
    assert wav_layout(reply.audio.data)[:3] == (44100, 1, 16)
    listed = await stub.ListGenerations(generations_pb2.ListGenerationsRequest(page_size=1), metadata=bearer(carol))
    assert listed.generations[0].id == reply.generation.id


async def status_becomes(http, account: Account, generation_id: str, wanted: str) -> dict:
    deadline = asyncio.get_running_loop().time() + 60
    while (stored := await generation(http, account, generation_id))["status"] != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"still {stored['status']}, never {wanted}"
        await asyncio.sleep(0.1)
    return stored


async def test_a_generation_whose_caller_hangs_up_is_recorded_as_canceled_and_leaves_the_synth(stub, http, carol, mesh):
    call = stub.CreateGeneration(
        generations_pb2.CreateGenerationRequest(generation=generations_pb2.GenerationSpec(input="[S1] Never mind.", max_new_tokens=3072)), metadata=bearer(carol)
    )
    # The response metadata naming it comes with the response: find it in the history.
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        newest = (await (await http.get(GENERATIONS, params={"page_size": "1"}, headers=carol.headers)).json())["generations"]
        if newest and newest[0]["input"] == "[S1] Never mind." and newest[0]["status"] == "running":
            break
        assert asyncio.get_running_loop().time() < deadline, f"never running: {newest}"
        await asyncio.sleep(0.1)
    generation_id = newest[0]["id"]
    synth_metrics = mesh.env["SYNTH_METRICS_PORT"]
    steps_at_hang_up = metric(synth_metrics, "synth_decode_steps_total")
    call.cancel()
    stored = await status_becomes(http, carol, generation_id, "canceled")
    assert stored["error_type"] == "canceled" and stored["end_time"]
    # The synth let its row go at its next step, far from the thousands of frames it asked for ...
    deadline = asyncio.get_running_loop().time() + 60
    while metric(synth_metrics, "synth_rows_active") != 0:
        assert asyncio.get_running_loop().time() < deadline, "the synth kept generating for a caller who left"
        await asyncio.sleep(0.05)
    assert metric(synth_metrics, "synth_decode_steps_total") - steps_at_hang_up < 500
    # ... and its place serves the next request.
    reply = await stub.CreateGeneration(
        generations_pb2.CreateGenerationRequest(generation=generations_pb2.GenerationSpec(input="[S1] Next one.", max_new_tokens=FRAMES)), metadata=bearer(carol)
    )
    assert reply.generation.status == "succeeded"


async def account_id_of(mesh, account: Account) -> int:
    connection = await asyncpg.connect(mesh.env["DATABASE_URL"])
    try:
        return await connection.fetchval("SELECT id FROM gateway.accounts WHERE name = $1", account.name)
    finally:
        await connection.close()


async def test_over_grpc_a_bare_account_id_or_a_wrong_key_is_unauthenticated(stub, carol, mesh):
    account_id = await account_id_of(mesh, carol)
    forged_edge = (("x-account-id", str(account_id)), ("x-edge-credential", "not-the-edges"))
    for metadata in [(("x-account-id", str(account_id)),), forged_edge, (("authorization", "Bearer vm_wrong"),), ()]:
        for call in (
            stub.CreateGeneration(generations_pb2.CreateGenerationRequest(generation=generations_pb2.GenerationSpec(input="[S1] Hi.")), metadata=metadata),
            stub.ListGenerations(generations_pb2.ListGenerationsRequest(), metadata=metadata),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            error = ApiError.from_rpc_error(caught.value)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED")


async def test_openapi_lists_the_generation_endpoints_and_the_one_without_a_key(http):
    document = await (await http.get("/openapi.json")).json()
    paths = document["paths"]
    assert {"post"} <= set(paths["/v1/voice/generations"]) and "get" in paths["/v1/voice/generations"]
    assert "get" in paths["/v1/voice/generations/{id}/audio"]
    assert paths["/v1/shared/generations/{share_token}/audio"]["get"]["security"] == []
    assert "security" not in paths["/v1/voice/generations"]["post"]  # the document's default: a key
