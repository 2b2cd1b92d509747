"""Usage, metered once where the work is done, and monthly quotas held by the statement that
admits a generation, end to end through the real mesh: GET /v1/usage agrees with the
history (GET /v1/voice/generations) and the library, and a quota stops the next
generation with 429 quota_exceeded, its reset time and Retry-After."""

from __future__ import annotations

import datetime
import math
import uuid

import aiohttp
import pytest

from tests.gateway.conftest import FOX, HELLO, Account, assert_error, created, make_key, upload_form, wait_for_models

GENERATIONS = "/v1/voice/generations"
FRAMES = 256


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def operator(key_env) -> Account:
    name = f"ops-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env, scopes="admin"))


@pytest.fixture
async def metered(http, operator) -> tuple[dict, Account]:
    """A fresh account, made by the operator, and a key of it with every scope but admin."""
    account = await created(await http.post("/v1/accounts", json={"name": f"meter-{uuid.uuid4().hex[:8]}"}, headers=operator.headers))
    key = (await created(await http.post(f"/v1/accounts/{account['id']}/keys", json={"name": "main"}, headers=operator.headers)))
    user = Account(account["name"], key["secret"])
    await wait_for_models(http, user)
    return account, user


async def generate(http, key: str, text: str, **body) -> aiohttp.ClientResponse:
    return await http.post(GENERATIONS, json={"input": text, "max_new_tokens": FRAMES, **body}, headers=headers(key))


async def history(http, user: Account) -> list[dict]:
    body = await created(await http.get(GENERATIONS, params={"page_size": 100}, headers=user.headers))
    return body["generations"]


async def usage(http, user: Account, **params) -> dict:
    return await created(await http.get("/v1/usage", params=params, headers=user.headers))


def today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def sums(generations: list[dict]) -> dict:
    return {
        "generations": len(generations),
        "characters": sum(len(g["input"]) for g in generations),
        "audio_seconds": sum(g.get("audio_duration_seconds", 0) for g in generations),
        "synthesis_seconds": sum(g.get("synthesis_seconds", 0) for g in generations),
    }


def counted(bucket: dict) -> dict:
    return {name: bucket.get(name, 0) for name in ("generations", "characters", "audio_seconds", "synthesis_seconds")}


def assert_agrees(bucket: dict, generations: list[dict]) -> None:
    expected, got = sums(generations), counted(bucket)
    assert got["generations"] == expected["generations"] and got["characters"] == expected["characters"], (got, expected)
    assert got["audio_seconds"] == pytest.approx(expected["audio_seconds"], abs=1e-6)
    assert got["synthesis_seconds"] == pytest.approx(expected["synthesis_seconds"], abs=1e-6)


async def test_usage_agrees_with_the_history_and_the_library_per_key_and_day(http, metered):
    account, user = metered
    second = await created(await http.post(
        "/v1/keys", json={"name": "second", "scopes": ["generate", "library:write"]}, headers=user.headers
    ))
    for key, text in [(user.key, "[S1] One. [S2] Two."), (user.key, "[S1] Three."), (second["secret"], "[S1] Four, from the other key.")]:
        response = await generate(http, key, text)
        assert response.status == 200, await response.text()
    # Admitted and failed (no provider): a generation with its characters, no audio.
    failed = await http.post(GENERATIONS, json={"input": "[S1] Nobody serves this.", "model": "nobody/x"}, headers=user.headers)
    assert failed.status == 404
    # Streamed, and through the speech endpoint: metered alike.
    streamed = await generate(http, second["secret"], "[S1] Streamed.", stream=True)
    assert streamed.status == 200 and len(await streamed.read()) > 44
    speech = await http.post("/v1/audio/speech", json={"input": "Spoken.", "response_format": "wav"}, headers=user.headers)
    assert speech.status == 200, await speech.text()
    # Samples, one by each key.
    await created(await upload_form(http, user, HELLO, "Ada", transcript="Hello world."))
    await created(await upload_form(http, Account(user.name, second["secret"]), FOX, "Bob", transcript="The quick brown fox."))

    made = await history(http, user)
    assert len(made) == 6 and all(g["status"] in ("succeeded", "failed") for g in made)
    assert all(g["synthesis_seconds"] > 0 for g in made if g["status"] == "succeeded")
    whole = await usage(http, user)
    assert whole["start_date"] == today()[:8] + "01" and whole["end_date"] == today()
    assert whole["buckets"] == []  # no grouping asked: the total alone
    assert_agrees(whole["total"], made)
    samples = await created(await http.get("/v1/voice/samples", headers=user.headers))
    assert whole["total"]["samples_stored"] == 2 == whole["stored_samples"] == len(samples["voice_samples"])
    assert whole["total"]["sample_bytes"] == whole["stored_sample_bytes"] > sum(
        s["original_size_bytes"] for s in samples["voice_samples"]
    )  # the uploads and their normalized WAVs

    by_key = await usage(http, user, group_by="key")
    keys = {bucket["key_id"]: bucket for bucket in by_key["buckets"]}
    main_id = (await created(await http.get("/v1/me", headers=user.headers)))["key"]["id"]
    assert set(keys) == {main_id, second["key"]["id"]}
    assert keys[second["key"]["id"]]["key_name"] == "second" and keys[second["key"]["id"]]["key_prefix"] == second["key"]["prefix"]
    for key_id, bucket in keys.items():
        assert_agrees(bucket, [g for g in made if g["key_id"] == key_id])
        assert bucket["samples_stored"] == 1

    by_day_and_key = await usage(http, user, group_by=["day", "key"], start_date=today(), end_date=today())
    assert {(b["date"], b["key_id"]) for b in by_day_and_key["buckets"]} == {(today(), main_id), (today(), second["key"]["id"])}

    # Deleting from the history does not give usage back (quotas count what was done).
    gone = next(g for g in made if g["status"] == "succeeded")
    assert (await http.delete(f"{GENERATIONS}/{gone['id']}", headers=user.headers)).status == 204
    assert counted((await usage(http, user))["total"]) == counted(whole["total"])

    # A day with nothing: no bucket, totals of zero.
    empty = await usage(http, user, start_date="2020-01-01", end_date="2020-01-31", group_by="day")
    assert empty.get("buckets", []) == [] and counted(empty["total"]) == dict.fromkeys(counted(empty["total"]), 0)


async def test_an_operator_reads_any_accounts_usage_and_an_account_only_its_own(http, metered, operator):
    account, user = metered
    assert (await generate(http, user.key, "[S1] Counted.")).status == 200
    own = await usage(http, user)
    theirs = await created(await http.get(f"/v1/accounts/{account['id']}/usage", headers=operator.headers))
    assert theirs["total"] == own["total"]
    await assert_error(await http.get(f"/v1/accounts/{account['id']}/usage", headers=user.headers), 403, "insufficient_scope")


@pytest.mark.parametrize(
    "params, param",
    [
        ({"start_date": "2025-13-01"}, "start_date"),
        ({"end_date": "yesterday"}, "end_date"),
        ({"start_date": "20250101"}, "start_date"),
        ({"start_date": "2025-02-02", "end_date": "2025-02-01"}, "start_date"),
        ({"start_date": "2020-01-01", "end_date": "2021-01-01"}, "start_date"),  # 367 days: one more than allowed
        ({"group_by": "week"}, "group_by"),
    ],
)
async def test_a_bad_usage_range_or_grouping_is_named(http, accounts, params, param):
    await assert_error(await http.get("/v1/usage", params=params, headers=accounts[0].headers), 400, "invalid_parameter", param)


async def test_the_longest_usage_range_allowed_is_answered(http, accounts):
    body = await usage(http, accounts[0], start_date="2020-01-01", end_date="2020-12-31")  # 366 days
    assert body["start_date"] == "2020-01-01" and body["end_date"] == "2020-12-31"


async def test_a_quota_of_ten_audio_seconds_stops_the_next_generation_with_429_and_its_reset_time(http, metered, operator):
    account, user = metered
    await created(await http.patch(f"/v1/accounts/{account['id']}", json={"monthly_audio_seconds": 10}, headers=operator.headers))
    quota = (await usage(http, user))["quota"]
    assert quota["quotas"] == [{"name": "audio_seconds", "limit": 10, "used": 0, "remaining": 10}]
    made = 0
    while True:
        used = (await usage(http, user))["total"].get("audio_seconds", 0)
        response = await generate(http, user.key, "[S1] Counting toward the quota.")
        if response.status != 200:
            break
        assert used < 10, f"admitted with {used} s of 10 used"
        made += 1
        assert made < 40, "the quota never stopped a generation"
    assert used >= 10 and made >= 1
    refusal = await assert_error(response, 429, "quota_exceeded")
    now = datetime.datetime.now(datetime.UTC)
    reset = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + datetime.timedelta(days=32)).replace(day=1)
    assert reset.strftime("%Y-%m-%dT%H:%M:%SZ") in refusal["message"]
    assert "audio_seconds" in refusal["message"]
    assert math.isclose(int(response.headers["Retry-After"]), (reset - now).total_seconds(), abs_tol=60)
    assert len(await history(http, user)) == made  # the refused one is not stored

    status = (await usage(http, user))["quota"]
    assert status["reset_time"] == reset.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["quotas"][0]["used"] == pytest.approx(used) and status["quotas"][0]["remaining"] == 0
    # Every face is held to it: the speech endpoint too.
    await assert_error(await http.post("/v1/audio/speech", json={"input": "Hi."}, headers=user.headers), 429, "quota_exceeded")
    # Removed, the account generates again.
    await created(await http.patch(f"/v1/accounts/{account['id']}", json={"monthly_audio_seconds": -1}, headers=operator.headers))
    assert (await generate(http, user.key, "[S1] Free again.")).status == 200


async def test_generation_and_character_quotas_hold_at_their_edge(http, metered, operator):
    account, user = metered

    async def unserved(text: str) -> aiohttp.ClientResponse:
        return await http.post(GENERATIONS, json={"input": text, "model": "nobody/x"}, headers=user.headers)

    await created(await http.patch(f"/v1/accounts/{account['id']}", json={"monthly_generations": 2}, headers=operator.headers))
    for _ in range(2):
        await assert_error(await unserved("[S1] Hi."), 404, "no_provider", "model")
    refused = await assert_error(await unserved("[S1] Hi."), 429, "quota_exceeded")
    assert "2 of its 2 generations" in refused["message"]

    used = (await usage(http, user))["total"]["characters"]  # 2 × 8
    await created(await http.patch(
        f"/v1/accounts/{account['id']}", json={"monthly_generations": -1, "monthly_characters": used + 10}, headers=operator.headers
    ))
    await assert_error(await unserved("[S1] 12345678901"), 429, "quota_exceeded")  # 15 characters: 5 too many
    await assert_error(await unserved("[S1] 12345"), 404, "no_provider", "model")  # 10: exactly what is left
    refused = await assert_error(await unserved("x"), 429, "quota_exceeded")  # one more character
    assert "characters" in refused["message"]
    status = (await usage(http, user))["quota"]["quotas"]
    assert status == [{"name": "characters", "limit": used + 10, "used": used + 10, "remaining": 0}]
