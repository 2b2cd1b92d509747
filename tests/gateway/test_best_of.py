"""best_of on every face that generates, end to end on the tiny random-weight Dia: candidates made side
by side, the best scoring returned, every candidate's scores in the history, streaming refused."""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.conftest import Account, assert_error, make_key, wait_for_models

FRAMES = 256
DIALOGUE = "[S1] Hello! Welcome to the show. [S2] Thanks for having me."
GENERATIONS = "/v1/voice/generations"


@pytest.fixture(scope="module")
async def erin(key_env) -> Account:
    name = f"erin-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


@pytest.fixture(scope="module", autouse=True)
async def provider(http, erin):
    await wait_for_models(http, erin)


async def history(http, account: Account, generation_id: str) -> dict:
    response = await http.get(f"{GENERATIONS}/{generation_id}", headers=account.headers)
    body = await response.json()
    assert response.status == 200, body
    return body


def assert_the_best_was_chosen(generation: dict, best_of: int) -> None:
    candidates = generation["analysis"]["candidates"]
    assert len(candidates) == best_of
    chosen = [candidate for candidate in candidates if candidate["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["seed"] == generation["parameters"]["seed"]
    assert chosen[0]["score"] == max(candidate["score"] for candidate in candidates)
    assert generation["parameters"]["best_of"] == best_of
    # The analysis returned is the chosen candidate's.
    assert generation["analysis"]["word_error_rate"] == chosen[0]["word_error_rate"]


async def test_the_best_of_two_fixed_seed_candidates_is_returned_and_both_scored(http, erin):
    response = await http.post(
        GENERATIONS, json={"input": DIALOGUE, "max_new_tokens": FRAMES, "seed": 7, "best_of": 2}, headers=erin.headers
    )
    assert response.status == 200, await response.text()
    assert (await response.read())[:4] == b"RIFF"
    generation = await history(http, erin, response.headers["X-Generation-Id"])
    assert_the_best_was_chosen(generation, 2)
    assert sorted(int(candidate["seed"]) for candidate in generation["analysis"]["candidates"]) == [7, 8]


async def test_one_candidate_by_default(http, erin):
    response = await http.post(GENERATIONS, json={"input": DIALOGUE, "max_new_tokens": FRAMES}, headers=erin.headers)
    generation = await history(http, erin, response.headers["X-Generation-Id"])
    assert generation["parameters"]["best_of"] == 1
    assert generation["analysis"]["candidates"] == []


@pytest.mark.parametrize("best_of", [0, 5])
async def test_best_of_outside_one_to_four_is_refused(http, erin, best_of):
    response = await http.post(GENERATIONS, json={"input": DIALOGUE, "best_of": best_of}, headers=erin.headers)
    await assert_error(response, 400, "invalid_parameter", "best_of")


async def test_best_of_with_streaming_is_refused_on_every_face(http, erin):
    response = await http.post(
        GENERATIONS, json={"input": DIALOGUE, "best_of": 2, "stream": True}, headers=erin.headers
    )
    error = await assert_error(response, 400, "invalid_parameter", "best_of")
    assert "stream" in error["message"]
    for stream_format in ("sse", "audio"):
        response = await http.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "input": "Hello there.", "best_of": 2, "stream_format": stream_format},
            headers=erin.headers,
        )
        await assert_error(response, 400, "invalid_parameter", "best_of")


async def test_openai_speech_takes_best_of_as_an_extra_field(http, erin):
    response = await http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": "Hello there.", "best_of": 2, "response_format": "wav"},
        headers=erin.headers,
    )
    assert response.status == 200, await response.text()
    generation = await history(http, erin, response.headers["X-Generation-Id"])
    assert_the_best_was_chosen(generation, 2)


async def test_a_prediction_takes_best_of_as_an_input(http, erin):
    response = await http.post(
        "/v1/models/nari-labs/dia/predictions",
        json={"input": {"text": DIALOGUE, "max_new_tokens": 500, "best_of": 2}},
        headers={**erin.headers, "Prefer": "wait"},
    )
    prediction = await response.json()
    assert response.status in (200, 201), prediction
    assert prediction["status"] == "succeeded", prediction
    generation = await history(http, erin, prediction["id"])
    assert_the_best_was_chosen(generation, 2)
    # The prediction's logs say what was heard and which candidate was chosen.
    heard = sum(word["heard"] for word in generation["analysis"]["words"])
    assert f"heard {heard} of 9 script words" in prediction["logs"]
    assert f"best of 2: seed {generation['parameters']['seed']} chosen" in prediction["logs"]
