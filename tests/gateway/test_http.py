"""The public HTTP API end to end: keys, the voice-sample endpoints, errors,
limits and the operational endpoints, through the real mesh (PostgreSQL,
transcode, speech recognition, library, gateway as separate processes)."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import wave

import aiohttp
import pytest

from tests.conftest import ROOT
from tests.gateway.conftest import FOX, HELLO, assert_error, created, extra_gateway, make_key, upload_form, words

async def upload_raw(http, account, audio: bytes, speaker: str, **params) -> aiohttp.ClientResponse:
    headers = {**account.headers, "Content-Type": "audio/webm"}
    return await http.post(
        "/v1/voice/samples", data=audio, params={"speaker_name": speaker, **params}, headers=headers
    )


# --- keys ----------------------------------------------------------------


def test_make_key_prints_a_new_key_for_each_account(accounts, key_env):
    alice, bob = accounts
    assert alice.key != bob.key
    for account in accounts:
        assert account.key.startswith("vm_") and len(account.key) >= 3 + 43  # 256 random bits
    again = make_key(alice.name, key_env)
    assert again not in (alice.key, bob.key)


def test_make_key_without_an_account_says_how_to_use_it():
    result = subprocess.run(
        ["make", "--no-print-directory", "key"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "make key ACCOUNT=<name>" in result.stderr


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer vm_not-a-real-key"}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}],
)
async def test_a_missing_or_wrong_key_is_401(http, headers):
    response = await http.get("/v1/voice/samples", headers=headers)
    await assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_every_key_of_an_account_works(http, accounts, key_env):
    alice, _ = accounts
    second = make_key(alice.name, key_env)
    for key in (alice.key, second):
        response = await http.get("/v1/voice/samples", headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200


# --- voice samples ----------------------------------------------------------


async def test_a_browser_recording_uploaded_as_a_form_gets_its_transcript(http, accounts):
    alice, _ = accounts
    sample = await created(await upload_form(http, alice, HELLO, "Alice"))
    assert {"hello", "world", "sample"} <= words(sample["transcript"]), sample["transcript"]
    assert sample["transcript_source"] == "stt"
    assert sample["speaker_name"] == "Alice"
    assert isinstance(sample["id"], int)
    assert sample["is_default"] is False  # shown although it is the default value
    assert sample["duration_seconds"] > 2


async def test_a_raw_body_upload_takes_its_fields_from_the_query(http, accounts):
    alice, _ = accounts
    sample = await created(await upload_raw(http, alice, FOX, "Fox", is_default="true", collection="animals"))
    assert {"quick", "brown", "fox"} <= words(sample["transcript"]), sample["transcript"]
    assert (sample["is_default"], sample["collection"]) == (True, "animals")


async def test_a_typed_transcript_is_kept(http, accounts):
    alice, _ = accounts
    sample = await created(await upload_form(http, alice, HELLO, "Typed", transcript="my own words"))
    assert (sample["transcript"], sample["transcript_source"]) == ("my own words", "user")


async def test_list_get_patch_and_delete(http, accounts):
    alice, _ = accounts
    sample = await created(await upload_raw(http, alice, HELLO, "Lifecycle"))
    url = f"/v1/voice/samples/{sample['id']}"

    listing = await (await http.get("/v1/voice/samples", headers=alice.headers)).json()
    assert sample["id"] in [s["id"] for s in listing["voice_samples"]]
    assert "next_page_token" in listing

    fetched = await (await http.get(url, headers=alice.headers)).json()
    assert fetched == sample

    response = await http.patch(url, json={"speaker_name": "Renamed", "transcript": "fixed words"}, headers=alice.headers)
    patched = await response.json()
    assert response.status == 200, patched
    assert (patched["speaker_name"], patched["transcript"], patched["transcript_source"]) == ("Renamed", "fixed words", "user")
    assert (await (await http.get(url, headers=alice.headers)).json())["speaker_name"] == "Renamed"

    response = await http.delete(url, headers=alice.headers)
    assert (response.status, await response.json()) == (200, {})
    await assert_error(await http.get(url, headers=alice.headers), 404, "not_found")


async def test_pages_follow_the_page_token(http, accounts):
    _, bob = accounts
    for name in ("one", "two", "three"):
        await created(await upload_form(http, bob, FOX, name, transcript="words"))
    first = await (await http.get("/v1/voice/samples", params={"page_size": "2"}, headers=bob.headers)).json()
    assert len(first["voice_samples"]) == 2 and first["next_page_token"]
    rest = await (
        await http.get("/v1/voice/samples", params={"page_size": "2", "page_token": first["next_page_token"]}, headers=bob.headers)
    ).json()
    seen = [s["id"] for s in first["voice_samples"] + rest["voice_samples"]]
    assert len(seen) == len(set(seen)) >= 3


async def test_the_default_flag_moves(http, accounts):
    alice, _ = accounts
    first = await created(await upload_form(http, alice, HELLO, "First", is_default="true", transcript="a"))
    second = await created(await upload_form(http, alice, FOX, "Second", is_default="true", transcript="b"))

    async def is_default(sample) -> bool:
        return (await (await http.get(f"/v1/voice/samples/{sample['id']}", headers=alice.headers)).json())["is_default"]

    assert (await is_default(first), await is_default(second)) == (False, True)
    response = await http.patch(f"/v1/voice/samples/{first['id']}", json={"is_default": True}, headers=alice.headers)
    assert response.status == 200
    assert (await is_default(first), await is_default(second)) == (True, False)


async def test_the_audio_endpoint_returns_44_1_khz_wav(http, accounts):
    alice, _ = accounts
    sample = await created(await upload_form(http, alice, HELLO, "Audio", transcript="x"))
    response = await http.get(f"/v1/voice/samples/{sample['id']}/audio", headers=alice.headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(await response.read())) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (44100, 1, 2)
        assert wav.getnframes() / 44100 == pytest.approx(sample["duration_seconds"], abs=0.1)


async def test_another_accounts_sample_is_not_found_everywhere(http, accounts):
    alice, bob = accounts
    sample = await created(await upload_form(http, alice, HELLO, "Private", transcript="x"))
    url = f"/v1/voice/samples/{sample['id']}"
    await assert_error(await http.get(url, headers=bob.headers), 404, "not_found")
    await assert_error(await http.get(url + "/audio", headers=bob.headers), 404, "not_found")
    await assert_error(await http.patch(url, json={"speaker_name": "Mine"}, headers=bob.headers), 404, "not_found")
    await assert_error(await http.delete(url, headers=bob.headers), 404, "not_found")
    listing = await (await http.get("/v1/voice/samples", params={"page_size": "100"}, headers=bob.headers)).json()
    assert sample["id"] not in [s["id"] for s in listing["voice_samples"]]
    # Still there, unchanged, for its owner.
    assert (await (await http.get(url, headers=alice.headers)).json())["speaker_name"] == "Private"


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("upload", [upload_form, upload_raw])
async def test_garbage_audio_is_audio_decode_failed(http, accounts, upload):
    alice, _ = accounts
    await assert_error(await upload(http, alice, b"this is not audio at all" * 50, "Noise"), 400, "audio_decode_failed", "audio")


async def test_unknown_json_fields_and_wrong_types_are_named(http, accounts):
    alice, _ = accounts
    sample = await created(await upload_form(http, alice, HELLO, "Strict", transcript="x"))
    url = f"/v1/voice/samples/{sample['id']}"
    error = await assert_error(await http.patch(url, json={"colour": "red"}, headers=alice.headers), 400, "invalid_parameter", "colour")
    assert "colour" in error["message"]
    error = await assert_error(await http.patch(url, json={"is_default": "yes"}, headers=alice.headers), 400, "invalid_parameter", "is_default")
    assert "true or false" in error["message"]
    response = await http.patch(url, data=b"{oops", headers={**alice.headers, "Content-Type": "application/json"})
    await assert_error(response, 400, "invalid_json")
    assert (await (await http.get(url, headers=alice.headers)).json())["speaker_name"] == "Strict"


async def test_bad_path_and_query_values_are_named(http, accounts):
    alice, _ = accounts
    await assert_error(await http.get("/v1/voice/samples/abc", headers=alice.headers), 400, "invalid_parameter", "id")
    response = await http.get("/v1/voice/samples", params={"page_size": "many"}, headers=alice.headers)
    await assert_error(response, 400, "invalid_parameter", "page_size")
    response = await http.get("/v1/voice/samples", params={"sort": "name"}, headers=alice.headers)
    await assert_error(response, 400, "invalid_parameter", "sort")
    response = await upload_raw(http, alice, HELLO, "x", is_default="sometimes")
    await assert_error(response, 400, "invalid_parameter", "is_default")


async def test_unknown_paths_are_404_and_wrong_methods_405(http, accounts):
    alice, _ = accounts
    await assert_error(await http.get("/v1/voice/nothing-here", headers=alice.headers), 404, "not_found")
    response = await http.put("/v1/voice/samples/1", json={}, headers=alice.headers)
    await assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}


# --- the request body limit, at its edge ---------------------------------------

LIMIT = 1000


@pytest.fixture(scope="module")
async def small_gateway(mesh):
    async with extra_gateway(mesh, GATEWAY_MAX_BODY_BYTES=str(LIMIT)) as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as session:
            yield session


async def test_a_body_of_exactly_the_limit_passes_the_gateway(small_gateway, accounts):
    alice, _ = accounts
    # It reaches the library, which finds it is not audio.
    response = await upload_raw(small_gateway, alice, b"x" * LIMIT, "Edge")
    await assert_error(response, 400, "audio_decode_failed", "audio")


async def test_one_byte_over_the_limit_is_413(small_gateway, accounts):
    alice, _ = accounts
    error = await assert_error(await upload_raw(small_gateway, alice, b"x" * (LIMIT + 1), "Big"), 413, "request_too_large")
    assert str(LIMIT) in error["message"]


async def test_a_chunked_body_over_the_limit_is_413(small_gateway, accounts):
    alice, _ = accounts

    async def chunks():  # no Content-Length: the gateway has to count
        for _ in range(LIMIT // 100 + 1):
            yield b"x" * 100

    response = await upload_raw(small_gateway, alice, chunks(), "Chunked")
    await assert_error(response, 413, "request_too_large")


async def test_a_form_over_the_limit_is_413(small_gateway, accounts):
    alice, _ = accounts
    await assert_error(await upload_form(small_gateway, alice, HELLO, "Form"), 413, "request_too_large")


# --- operational endpoints ------------------------------------------------------


async def test_openapi_lists_the_sample_endpoints(http):
    response = await http.get("/openapi.json")
    document = await response.json()
    assert response.status == 200
    paths = document["paths"]
    assert set(paths["/v1/voice/samples"]) == {"get", "post"}
    assert set(paths["/v1/voice/samples/{id}"]) == {"get", "patch", "delete"}
    assert "get" in paths["/v1/voice/samples/{id}/audio"]
    assert "multipart/form-data" in paths["/v1/voice/samples"]["post"]["requestBody"]["content"]
    assert "/v1/models" in paths


async def test_health_and_readiness(http, mesh):
    assert (await http.get("/healthz")).status == 200
    response = await http.get("/readyz")
    body = await response.json()
    assert response.status == 200, body
    assert body["upstreams"] == {"library": "SERVING", "gateway": "SERVING"}


async def test_metrics_count_requests_by_route_method_and_status(http, accounts):
    alice, _ = accounts
    await http.get("/v1/voice/samples", headers=alice.headers)
    await http.get("/v1/voice/samples/abc", headers=alice.headers)
    text = await (await http.get("/metrics")).text()
    assert 'http_requests_total{method="GET",route="/v1/voice/samples",status="200"}' in text
    assert 'http_requests_total{method="GET",route="/v1/voice/samples/{id}",status="400"}' in text
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/voice/samples"' in text
    assert "process_cpu_seconds_total" in text or "python_info" in text  # the default registry


async def test_each_response_has_a_request_id_that_reaches_the_library(http, accounts, mesh):
    alice, _ = accounts
    response = await upload_form(http, alice, HELLO, "Traced", transcript="x")
    request_id = response.headers["X-Request-Id"]
    assert response.status == 200 and len(request_id) >= 16
    # The library logs each stored sample, with the request id it was called with.
    deadline = asyncio.get_running_loop().time() + 10  # the log line may reach us just after the answer
    while not any(request_id in line and "voice sample stored" in line for line in mesh.log_lines["library"]):
        assert asyncio.get_running_loop().time() < deadline, "the library never logged the request id"
        await asyncio.sleep(0.05)
    other = await http.get("/healthz")
    assert other.headers["X-Request-Id"] not in ("", request_id)


# --- restarts and shutdown ------------------------------------------------------


async def test_while_the_library_restarts_its_endpoints_answer_503_then_serve_again(http, accounts, mesh):
    alice, _ = accounts
    await mesh.stop_service("library")
    try:
        response = await http.get("/v1/voice/samples", headers=alice.headers)
        error = await assert_error(response, 503, "unavailable")
        assert "library" in error["message"] and "127.0.0.1" not in error["message"]
        response = await http.get("/readyz")
        assert response.status == 503
        assert (await response.json())["upstreams"]["library"] == "NOT_SERVING"
    finally:
        await mesh.start_service("library")
        await mesh.wait_serving("library", timeout=120)

    # Back within the reconnect backoff (RECONNECT_BACKOFF_SECONDS), never a 500 meanwhile.
    statuses = []
    for _ in range(200):
        response = await http.get("/v1/voice/samples", headers=alice.headers)
        statuses.append(response.status)
        if response.status == 200:
            break
        await asyncio.sleep(0.1)
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    assert (await http.get("/readyz")).status == 200


async def test_a_stopping_gateway_finishes_the_requests_in_flight(mesh, accounts):
    alice, _ = accounts
    release = asyncio.Event()
    first_chunk_sent = asyncio.Event()

    async def slow_body():
        yield HELLO[:1000]
        first_chunk_sent.set()
        await release.wait()
        yield HELLO[1000:]

    async with extra_gateway(mesh) as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as session:
            upload = asyncio.create_task(upload_raw(session, alice, slow_body(), "Slow"))
            await first_chunk_sent.wait()
            await asyncio.sleep(0.2)  # let the gateway read the headers: the request is in flight
            gateway.processes["gateway"].send_signal(signal.SIGTERM)
            await eventually(lambda: any("stopping HTTP server" in line for line in gateway.log_lines["gateway"]))
            release.set()
            sample = await created(await upload)
            assert sample["speaker_name"] == "Slow"
            assert await gateway.processes["gateway"].wait() == 0


async def eventually(condition, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_gateways_own_routes_are_served_in_process_not_over_its_grpc_port(mesh, accounts):
    """A gateway whose address in the mesh leads nowhere (GATEWAY_ADDR) cannot reach its own gRPC port,
    yet serves its own routes, generations and predictions included: the edge calls them in process.
    Another service's routes (the library's) still come over gRPC."""
    alice, _ = accounts
    async with extra_gateway(mesh, GATEWAY_ADDR="127.0.0.1:9") as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as session:
            models = await session.get("/v1/models", headers=alice.headers)
            assert models.status == 200, await models.text()
            made = await session.post(
                "/v1/voice/generations",
                json={"input": "[S1] Served in process.", "max_new_tokens": 256, "seed": 1},
                headers=alice.headers,
            )
            assert made.status == 200, await made.text()
            assert made.headers["X-Generation-Id"].startswith("gen_") and made.headers["X-Max-New-Tokens"] == "256"
            samples = await session.get("/v1/voice/samples", headers=alice.headers)
            assert samples.status == 200
            assert (await session.get("/v1/voice/generations", headers={})).status == 401  # the key is still checked
