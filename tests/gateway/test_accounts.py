"""Keys with scopes, browser tokens, and accounts that operators manage, end to end through
the real mesh (PostgreSQL, library, synth with the tiny random Dia, gateway as processes)
and its real clients: HTTP, gRPC, the `openai` package."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import secrets
import uuid

import aiohttp
import asyncpg
import grpc
import pytest

from runtime.server import channel_options
from services.gateway import accounts as gateway_accounts
from tests.gateway.conftest import (
    HELLO,
    Account,
    assert_error,
    created,
    extra_gateway,
    make_key,
    upload_form,
    wait_for_models,
)
from tests.gateway.test_openai_dialect import run_openai
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc

GENERATIONS = "/v1/voice/generations"
FRAMES = 256  # the least a generation asks for: about a second on the tiny model


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
async def dana(key_env, http) -> Account:
    """An account of this module's own, its key made by `make key` (every scope but admin)."""
    name = f"dana-{uuid.uuid4().hex[:8]}"
    account = Account(name, make_key(name, key_env))
    await wait_for_models(http, account)
    return account


@pytest.fixture(scope="module")
def operator(key_env) -> Account:
    """An operator's key: `make key ... SCOPES=admin`."""
    name = f"ops-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env, scopes="admin"))


async def new_key(http, account: Account, scopes: list[str] | None = None, **body) -> dict:
    if scopes is not None:
        body["scopes"] = scopes
    return await created(await http.post("/v1/keys", json=body, headers=account.headers))


async def listed_keys(http, account: Account) -> dict[str, dict]:
    body = await created(await http.get("/v1/keys", headers=account.headers))
    return {key["id"]: key for key in body["keys"]}


async def unserved(http, key: str, text: str = "[S1] Anyone?") -> aiohttp.ClientResponse:
    """A generation that is admitted, then ends at once: no provider serves its model."""
    return await http.post(GENERATIONS, json={"input": text, "model": "nobody/serves-this"}, headers=headers(key))


# --- keys -----------------------------------------------------------------------------


async def test_a_key_made_through_the_api_is_shown_once_listed_by_its_prefix_and_works(http, dana, mesh):
    made = await new_key(http, dana, ["library:read"], name="ci reader")
    secret, key = made["secret"], made["key"]
    assert secret.startswith("vm_") and len(secret) > 40
    assert key["prefix"] == secret[:11] and key["id"].startswith("key_")
    assert key["name"] == "ci reader" and key["scopes"] == ["library:read"] and key["kind"] == "key"
    assert "last_used_time" not in key and "expire_time" not in key

    listing = await http.get("/v1/keys", headers=dana.headers)
    text = await listing.text()
    assert secret not in text and secret[11:] not in text  # never shown again, not even in part
    listed = (await listing.json())["keys"]
    mine = next(item for item in listed if item["id"] == key["id"])
    assert mine == key
    assert any(item["name"] == "make key" for item in listed)  # the key dana was given, listed too

    assert (await http.get("/v1/voice/samples", headers=headers(secret))).status == 200
    used = (await listed_keys(http, dana))[key["id"]]
    assert datetime.datetime.fromisoformat(used["last_used_time"]) >= datetime.datetime.fromisoformat(key["create_time"])

    me = await created(await http.get("/v1/me", headers=headers(secret)))
    assert me["account"]["name"] == dana.name and me["key"]["id"] == key["id"]
    assert me["key"]["scopes"] == ["library:read"]

    # Renamed; its name is checked as a name.
    renamed = await created(await http.patch(f"/v1/keys/{key['id']}", json={"name": "reader"}, headers=dana.headers))
    assert renamed["name"] == "reader"
    await assert_error(
        await http.patch(f"/v1/keys/{key['id']}", json={"name": "a\u200bb"}, headers=dana.headers),
        400, "invalid_parameter", "name",
    )

    # Neither the key nor its hash is ever logged.
    await asyncio.sleep(0.5)
    logs = "\n".join(line for lines in mesh.log_lines.values() for line in lines)
    assert secret not in logs and secret[11:] not in logs
    assert gateway_accounts.key_hash(secret) not in logs


async def test_only_the_keys_hash_is_stored(http, dana, database):
    made = await new_key(http, dana, ["library:read"])
    connection = await asyncpg.connect(database.url)
    try:
        row = await connection.fetchrow("SELECT * FROM gateway.api_keys WHERE public_id = $1", made["key"]["id"])
    finally:
        await connection.close()
    assert row["key_hash"] == hashlib.sha256(made["secret"].encode()).hexdigest()
    assert made["secret"] not in {str(value) for value in row.values()}
    assert made["secret"][11:] not in " ".join(str(value) for value in row.values())


async def test_a_key_is_refused_what_its_scopes_do_not_cover_naming_the_scope(http, dana, mesh):
    reader = (await new_key(http, dana, ["library:read"]))["secret"]
    assert (await http.get("/v1/voice/samples", headers=headers(reader))).status == 200
    refused = await assert_error(
        await http.post(GENERATIONS, json={"input": "[S1] Hi.", "max_new_tokens": FRAMES}, headers=headers(reader)),
        403, "insufficient_scope",
    )
    assert "'generate'" in refused["message"]
    form = aiohttp.FormData()
    form.add_field("audio", HELLO, filename="a.webm", content_type="audio/webm")
    form.add_field("speaker_name", "Nope")
    refused = await assert_error(await http.post("/v1/voice/samples", data=form, headers=headers(reader)), 403, "insufficient_scope")
    assert "'library:write'" in refused["message"]
    for path, scope in [("/v1/voice/generations", "history"), ("/v1/usage", "usage:read"), ("/v1/keys", "keys"),
                        ("/v1/predictions", "predictions"), ("/v1/accounts", "admin")]:  # fmt: skip
        refused = await assert_error(await http.get(path, headers=headers(reader)), 403, "insufficient_scope")
        assert f"'{scope}'" in refused["message"], path
    assert (await http.get("/v1/models", headers=headers(reader))).status == 200  # any key

    # Internal gRPC clients are held to the same scopes.
    async with grpc.aio.insecure_channel(mesh.address("gateway"), options=channel_options()) as channel:
        stub = generations_pb2_grpc.GenerationServiceStub(channel)
        request = generations_pb2.CreateGenerationRequest(generation=generations_pb2.GenerationSpec(input="[S1] Hi."))
        with pytest.raises(grpc.aio.AioRpcError) as refused_over_grpc:
            await stub.CreateGeneration(request, metadata=(("authorization", f"Bearer {reader}"),))
        assert refused_over_grpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'generate'" in refused_over_grpc.value.details()
        listing = await stub.ListGenerations(
            generations_pb2.ListGenerationsRequest(), metadata=(("authorization", f"Bearer {dana.key}"),)
        )
        assert listing is not None


async def test_a_generate_only_key_generates_but_reads_neither_the_library_nor_the_history(http, dana):
    generator = (await new_key(http, dana, ["generate"]))["secret"]
    response = await http.post(GENERATIONS, json={"input": "[S1] Hello.", "max_new_tokens": FRAMES, "seed": 1}, headers=headers(generator))
    assert response.status == 200, await response.text()
    assert (await response.read())[:4] == b"RIFF"
    await assert_error(await http.get("/v1/voice/samples", headers=headers(generator)), 403, "insufficient_scope")
    generation_id = response.headers["X-Generation-Id"]
    await assert_error(await http.get(f"{GENERATIONS}/{generation_id}", headers=headers(generator)), 403, "insufficient_scope")
    assert (await http.get(f"{GENERATIONS}/{generation_id}", headers=dana.headers)).status == 200


async def test_the_openai_client_with_a_generate_only_key_speaks_but_cannot_list_voices(mesh, http, dana):
    generator = Account(dana.name, (await new_key(http, dana, ["generate"]))["secret"])
    answer = await asyncio.to_thread(
        run_openai,
        mesh,
        generator,
        """
        import json, openai
        client = openai.OpenAI()
        audio = client.audio.speech.create(model="tts-1", voice="", input="Hello there.", response_format="wav")
        try:
            client.get("/audio/voices", cast_to=object)
            voices = None
        except openai.PermissionDeniedError as error:
            voices = [error.status_code, error.type, error.message]
        print(json.dumps({"riff": audio.content[:4].decode("latin-1"), "voices": voices}))
        """,
    )
    assert answer["riff"] == "RIFF"
    assert answer["voices"][:2] == [403, "insufficient_scope"] and "library:read" in answer["voices"][2]


async def test_a_key_makes_keys_with_no_scope_it_lacks(http, dana):
    keeper = Account(dana.name, (await new_key(http, dana, ["keys", "library:read"]))["secret"])
    refused = await assert_error(await http.post("/v1/keys", json={"scopes": ["library:read", "generate"]}, headers=keeper.headers), 403, "insufficient_scope")
    assert "'generate'" in refused["message"]
    await assert_error(await http.post("/v1/keys", json={"scopes": ["admin"]}, headers=keeper.headers), 403, "insufficient_scope")
    own = await new_key(http, keeper)  # none asked: the caller's own
    assert own["key"]["scopes"] == ["library:read", "keys"]
    await assert_error(await http.post("/v1/keys", json={"scopes": ["everything"]}, headers=keeper.headers), 400, "invalid_parameter", "scopes")
    await assert_error(
        await http.post("/v1/keys", json={"expire_time": "2001-01-01T00:00:00Z"}, headers=keeper.headers),
        400, "invalid_parameter", "expire_time",
    )


async def test_an_expiring_key_works_until_its_expire_time(http, dana):
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    made = await new_key(http, dana, ["library:read"], expire_time=soon.isoformat().replace("+00:00", "Z"))
    assert made["key"]["expire_time"].startswith(soon.strftime("%Y-%m-%dT%H:%M:%S"))
    assert (await http.get("/v1/voice/samples", headers=headers(made["secret"]))).status == 200
    await asyncio.sleep(max(0.0, (soon - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.5)
    await assert_error(await http.get("/v1/voice/samples", headers=headers(made["secret"])), 401, "unauthorized")


async def test_a_revoked_key_stops_at_once_on_its_replica_and_within_the_key_cache_time_on_the_others(mesh, http, dana):
    made = await new_key(http, dana, ["library:read"])
    secret = made["secret"]
    async with extra_gateway(mesh, GATEWAY_KEY_CACHE_SECONDS="2") as other:
        async with aiohttp.ClientSession(base_url=other.http_url) as elsewhere:
            # Both replicas have checked the key, and remember it.
            assert (await http.get("/v1/voice/samples", headers=headers(secret))).status == 200
            assert (await elsewhere.get("/v1/voice/samples", headers=headers(secret))).status == 200
            revoked = await http.delete(f"/v1/keys/{made['key']['id']}", headers=dana.headers)
            assert revoked.status == 204 and await revoked.read() == b""
            # The replica that revoked it forgot it at once (its own cache holds keys for 30 s).
            stopped = await assert_error(await http.get("/v1/voice/samples", headers=headers(secret)), 401, "unauthorized")
            assert stopped["message"] == "invalid API key"
            # The other stops within its GATEWAY_KEY_CACHE_SECONDS.
            deadline = asyncio.get_running_loop().time() + 30
            while (status := (await elsewhere.get("/v1/voice/samples", headers=headers(secret))).status) == 200:
                assert asyncio.get_running_loop().time() < deadline, "the revoked key kept working elsewhere"
                await asyncio.sleep(0.2)
            assert status == 401
    assert made["key"]["id"] not in await listed_keys(http, dana)
    await assert_error(await http.delete(f"/v1/keys/{made['key']['id']}", headers=dana.headers), 404, "not_found")


async def test_keys_of_one_account_are_invisible_to_another(http, dana, accounts):
    bob = accounts[1]
    made = await new_key(http, dana, ["library:read"], name="dana's")
    assert made["key"]["id"] not in await listed_keys(http, bob)
    made_up = f"key_{secrets.token_hex(8)}"
    for key_id in (made["key"]["id"], made_up):
        await assert_error(await http.delete(f"/v1/keys/{key_id}", headers=bob.headers), 404, "not_found")
        await assert_error(await http.patch(f"/v1/keys/{key_id}", json={"name": "mine"}, headers=bob.headers), 404, "not_found")
    assert (await http.get("/v1/voice/samples", headers=headers(made["secret"]))).status == 200  # untouched
    assert (await listed_keys(http, dana))[made["key"]["id"]]["name"] == "dana's"
    me = await created(await http.get("/v1/me", headers=bob.headers))
    assert me["account"]["name"] == bob.name


async def test_knowing_a_keys_prefix_gains_nothing(http, dana):
    made = await new_key(http, dana, ["library:read"])
    secret, prefix = made["secret"], made["key"]["prefix"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    near = secret[:-1] + next(c for c in alphabet if c != secret[-1])  # one character off, at the end
    guesses = [prefix, near, prefix + secrets.token_urlsafe(32)[: len(secret) - len(prefix)]]
    guesses += [prefix + secrets.token_urlsafe(32) for _ in range(30)]
    made_up = await http.get("/v1/voice/samples", headers=headers("vm_" + secrets.token_urlsafe(32)))
    expected = await made_up.json()
    assert made_up.status == 401
    for guess in guesses:
        response = await http.get("/v1/voice/samples", headers=headers(guess))
        assert (response.status, await response.json()) == (401, expected), guess
    assert (await http.get("/v1/voice/samples", headers=headers(secret))).status == 200  # not locked out


# --- browser tokens -------------------------------------------------------------------


async def test_a_browser_token_generates_for_its_minutes_and_does_nothing_else(http, dana):
    minter = await new_key(http, dana, ["generate", "library:read"], name="backend")
    minted = await created(await http.post("/v1/tokens", json={"ttl_seconds": 8}, headers=headers(minter["secret"])))
    token = minted["token"]
    assert token.startswith("vmt_") and minted["scopes"] == ["generate"]
    response = await http.post(GENERATIONS, json={"input": "[S1] From a page.", "max_new_tokens": FRAMES}, headers=headers(token))
    assert response.status == 200, await response.text()
    made = await created(await http.get(f"{GENERATIONS}/{response.headers['X-Generation-Id']}", headers=dana.headers))
    assert made["key_id"] == minter["key"]["id"]  # a token's usage is its minting key's
    await assert_error(await http.get("/v1/voice/samples", headers=headers(token)), 403, "insufficient_scope")
    refused = await assert_error(await http.post("/v1/tokens", json={}, headers=headers(token)), 403, "insufficient_scope")
    assert "browser token" in refused["message"]
    me = await created(await http.get("/v1/me", headers=headers(token)))
    assert me["key"]["kind"] == "browser_token" and me["key"]["scopes"] == ["generate"]
    assert minted["token"] not in str(await listed_keys(http, dana)) and me["key"]["id"] not in await listed_keys(http, dana)
    # It stops at its expire_time.
    remaining = (await created(await http.get("/v1/me", headers=headers(token))))["key"]["expire_time"]
    until = datetime.datetime.fromisoformat(remaining.replace("Z", "+00:00"))
    await asyncio.sleep(max(0.0, (until - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.5)
    await assert_error(await unserved(http, token), 401, "unauthorized")


async def test_a_browser_token_stops_with_the_key_that_minted_it_and_lives_no_longer_than_allowed(http, dana):
    minter = await new_key(http, dana, ["generate"])
    token = (await created(await http.post("/v1/tokens", json={}, headers=headers(minter["secret"]))))["token"]
    await assert_error(await unserved(http, token), 404, "no_provider", "model")  # admitted, then no provider
    assert (await http.delete(f"/v1/keys/{minter['key']['id']}", headers=dana.headers)).status == 204
    await assert_error(await unserved(http, token), 401, "unauthorized")
    other = (await new_key(http, dana, ["generate"]))["secret"]
    await assert_error(
        await http.post("/v1/tokens", json={"ttl_seconds": 901}, headers=headers(other)), 400, "invalid_parameter", "ttl_seconds"
    )
    await assert_error(await http.post("/v1/tokens", json={"ttl_seconds": 0}, headers=headers(other)), 400, "invalid_parameter", "ttl_seconds")
    longest = await created(await http.post("/v1/tokens", json={"ttl_seconds": 900}, headers=headers(other)))
    assert longest["token"].startswith("vmt_")


# --- accounts, for operators -----------------------------------------------------------


async def test_operators_create_list_and_limit_accounts_and_no_one_else_may(http, operator, dana):
    await assert_error(await http.get("/v1/accounts", headers=dana.headers), 403, "insufficient_scope")
    name = f"team-{uuid.uuid4().hex[:8]}"
    made = await created(await http.post("/v1/accounts", json={"name": name, "monthly_generations": 100}, headers=operator.headers))
    assert made["name"] == name and made["disabled"] is False and made["monthly_generations"] == 100
    assert "monthly_audio_seconds" not in made
    await assert_error(await http.post("/v1/accounts", json={"name": name}, headers=operator.headers), 409, "already_exists", "name")
    await assert_error(await http.post("/v1/accounts", json={"name": "has space"}, headers=operator.headers), 400, "invalid_parameter", "name")

    # Every account, a page at a time.
    seen, token = [], ""
    while True:
        page = await created(await http.get("/v1/accounts", params={"page_size": 2, "page_token": token}, headers=operator.headers))
        seen += [account["name"] for account in page["accounts"]]
        token = page.get("next_page_token", "")
        if not token:
            break
    assert {name, dana.name, operator.name} <= set(seen) and len(seen) == len(set(seen))

    changed = await created(await http.patch(
        f"/v1/accounts/{made['id']}", json={"monthly_audio_seconds": 60, "monthly_generations": -1}, headers=operator.headers
    ))
    assert changed["monthly_audio_seconds"] == 60 and "monthly_generations" not in changed
    await assert_error(
        await http.patch(f"/v1/accounts/{made['id']}", json={"monthly_characters": -2}, headers=operator.headers),
        400, "invalid_parameter", "monthly_characters",
    )
    await assert_error(await http.get("/v1/accounts/999999999", headers=operator.headers), 404, "not_found")


async def test_an_operator_gives_an_account_a_key_and_disables_and_enables_it(http, operator):
    account = await created(await http.post("/v1/accounts", json={"name": f"team-{uuid.uuid4().hex[:8]}"}, headers=operator.headers))
    made = await created(await http.post(f"/v1/accounts/{account['id']}/keys", json={"name": "first"}, headers=operator.headers))
    key = made["secret"]
    assert made["key"]["scopes"] == list(gateway_accounts.DEFAULT_SCOPES)
    assert (await http.get("/v1/voice/samples", headers=headers(key))).status == 200
    await assert_error(await unserved(http, key), 404, "no_provider", "model")

    disabled = await created(await http.patch(f"/v1/accounts/{account['id']}", json={"disabled": True}, headers=operator.headers))
    assert disabled["disabled"] is True and disabled["disable_time"]
    for response in (await http.get("/v1/voice/samples", headers=headers(key)), await unserved(http, key)):
        await assert_error(response, 403, "account_disabled")

    enabled = await created(await http.patch(f"/v1/accounts/{account['id']}", json={"disabled": False}, headers=operator.headers))
    assert enabled["disabled"] is False and "disable_time" not in enabled
    assert (await http.get("/v1/voice/samples", headers=headers(key))).status == 200


async def test_a_disabled_account_is_refused_generations_at_once_on_every_replica(mesh, http, operator):
    account = await created(await http.post("/v1/accounts", json={"name": f"team-{uuid.uuid4().hex[:8]}"}, headers=operator.headers))
    key = (await created(await http.post(f"/v1/accounts/{account['id']}/keys", json={}, headers=operator.headers)))["secret"]
    async with extra_gateway(mesh, GATEWAY_KEY_CACHE_SECONDS="3600") as other:
        async with aiohttp.ClientSession(base_url=other.http_url) as elsewhere:
            await assert_error(await unserved(elsewhere, key), 404, "no_provider", "model")  # its key cached there
            await created(await http.patch(f"/v1/accounts/{account['id']}", json={"disabled": True}, headers=operator.headers))
            # Admission itself refuses it, whatever the other replica's cache remembers.
            await assert_error(await unserved(elsewhere, key), 403, "account_disabled")


async def test_an_accounts_own_limits_replace_the_gateways(http, operator):
    account = await created(await http.post(
        "/v1/accounts", json={"name": f"team-{uuid.uuid4().hex[:8]}", "generation_burst": 1, "generations_per_second": 0.001},
        headers=operator.headers,
    ))
    key = (await created(await http.post(f"/v1/accounts/{account['id']}/keys", json={}, headers=operator.headers)))["secret"]
    await assert_error(await unserved(http, key), 404, "no_provider", "model")
    refused = await http.post(GENERATIONS, json={"input": "[S1] Again.", "model": "nobody/serves-this"}, headers=headers(key))
    await assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) > 100  # its own rate: one per 1000 s


async def test_deleting_an_account_deletes_everything_it_has_everywhere_and_can_be_done_again(http, operator, database, mesh):
    name = f"gone-{uuid.uuid4().hex[:8]}"
    account = await created(await http.post("/v1/accounts", json={"name": name}, headers=operator.headers))
    account_id = account["id"]
    made = await created(await http.post(f"/v1/accounts/{account_id}/keys", json={}, headers=operator.headers))
    key = made["secret"]
    user = Account(name, key)
    sample = await created(await upload_form(http, user, HELLO, "Gone", transcript="Hello world."))
    response = await http.post(
        GENERATIONS, json={"input": "[S1] Hello.", "speakers": {"S1": sample["id"]}, "max_new_tokens": FRAMES}, headers=user.headers
    )
    assert response.status == 200, await response.text()
    await assert_error(await unserved(http, key), 404, "no_provider", "model")
    form = aiohttp.FormData()
    form.add_field("content", b"some bytes", filename="f.bin", content_type="application/octet-stream")
    assert (await http.post("/v1/files", data=form, headers=user.headers)).status == 200
    assert (await http.get("/v1/webhooks/default/secret", headers=user.headers)).status == 200
    await created(await http.post("/v1/keys", json={"name": "second"}, headers=user.headers))
    await created(await http.post("/v1/tokens", json={}, headers=user.headers))

    deleted = await http.delete(f"/v1/accounts/{account_id}", headers=operator.headers)
    assert deleted.status == 204 and await deleted.read() == b""
    await assert_error(await http.get("/v1/voice/samples", headers=user.headers), 401, "unauthorized")
    await assert_error(await http.get(f"/v1/accounts/{account_id}", headers=operator.headers), 404, "not_found")

    connection = await asyncpg.connect(database.url)
    try:
        for table in ("generations", "prediction_files", "prediction_prompt_samples", "webhook_secrets",
                      "generation_allowances", "usage_daily", "api_keys"):  # fmt: skip
            left = await connection.fetchval(f"SELECT count(*) FROM gateway.{table} WHERE account_id = $1", account_id)
            assert left == 0, table
        assert await connection.fetchval("SELECT count(*) FROM library.samples WHERE account_id = $1", account_id) == 0
        assert await connection.fetchval("SELECT count(*) FROM library.sample_usage WHERE account_id = $1", account_id) == 0
    finally:
        await connection.close()
    assert any("account deleted with all its data" in line and str(account_id) in line for line in mesh.log_lines["gateway"])

    again = await http.delete(f"/v1/accounts/{account_id}", headers=operator.headers)  # idempotent
    assert again.status == 204
    await assert_error(await http.delete("/v1/accounts/999999999", headers=operator.headers), 404, "not_found")
    # Its name is free again, for a new account with nothing of the old one.
    reborn = await created(await http.post("/v1/accounts", json={"name": name}, headers=operator.headers))
    assert reborn["id"] != account_id


async def test_a_keys_name_may_be_as_long_as_the_limit_and_no_longer(http, dana):
    assert (await new_key(http, dana, ["library:read"], name="n" * 100))["key"]["name"] == "n" * 100
    await assert_error(
        await http.post("/v1/keys", json={"name": "n" * 101, "scopes": ["library:read"]}, headers=dana.headers),
        400, "invalid_parameter", "name",
    )


async def test_an_account_has_at_most_its_most_keys_and_browser_tokens(mesh, operator):
    limits = {"GATEWAY_MAX_KEYS_PER_ACCOUNT": "2", "GATEWAY_MAX_BROWSER_TOKENS_PER_ACCOUNT": "2"}
    async with extra_gateway(mesh, **limits) as gateway, aiohttp.ClientSession(base_url=gateway.http_url) as http:
        account = await created(await http.post("/v1/accounts", json={"name": f"few-{uuid.uuid4().hex[:8]}"}, headers=operator.headers))
        first = await created(await http.post(f"/v1/accounts/{account['id']}/keys", json={}, headers=operator.headers))
        user = Account(account["name"], first["secret"])
        second = await new_key(http, user, ["library:read"])  # the second, the most
        refused = await http.post("/v1/keys", json={"scopes": ["library:read"]}, headers=user.headers)
        await assert_error(refused, 429, "rate_limited")
        await assert_error(await http.post(f"/v1/accounts/{account['id']}/keys", json={}, headers=operator.headers), 429, "rate_limited")
        assert (await http.delete(f"/v1/keys/{second['key']['id']}", headers=user.headers)).status == 204
        await new_key(http, user, ["library:read"])  # room again once one is revoked

        for _ in range(2):
            await created(await http.post("/v1/tokens", json={"ttl_seconds": 2}, headers=user.headers))
        refused = await http.post("/v1/tokens", json={}, headers=user.headers)
        await assert_error(refused, 429, "rate_limited")
        assert refused.headers["Retry-After"] == "60"
        await asyncio.sleep(2.5)  # once they have expired, there is room again
        await created(await http.post("/v1/tokens", json={}, headers=user.headers))


async def test_a_request_refused_for_its_scope_is_answered_whatever_its_body_holds(mesh, http, dana):
    """Refused before its body is read, the body is read and dropped so that the answer goes out;
    one that is not in its Content-Encoding got the connection reset instead of the 403."""
    import requests

    reader = (await new_key(http, dana, ["library:read"]))["secret"]
    bodies = [b"not deflate at all " * 200, b'{"name": "x"}', b"\x00" * 70_000]
    with requests.Session() as session:
        for attempt in range(3):
            for body in bodies:
                response = await asyncio.to_thread(
                    session.post, mesh.http_url + "/v1/accounts", data=body, timeout=30,
                    headers={**headers(reader), "Content-Type": "application/json", "Content-Encoding": "deflate"},
                )
                assert response.status_code == 403, (attempt, body[:20], response.text)
                assert response.json()["error"]["type"] == "insufficient_scope"


async def test_what_a_replica_let_in_after_a_deletion_goes_when_the_account_is_purged_once_more(
    mesh, http, operator, database, monkeypatch
):
    """Another replica's key cache may still let the deleted account's key in for a while: what it stores
    then (a sample in the library, a row of the gateway's) goes at the second purge, once that time has come."""
    from google.api import httpbody_pb2

    from runtime import clients
    from services.gateway.accounts import Accounts
    from runtime.objects import ObjectStore
    from services.gateway.generation.library import Library
    from services.gateway.generation.storage import AudioStorage
    from services.gateway.generation.tenancy import AccountDeletion
    from services.gateway.store import Store
    from voice.library.v1 import library_pb2, library_pb2_grpc

    account = await created(await http.post("/v1/accounts", json={"name": f"late-{uuid.uuid4().hex[:8]}"}, headers=operator.headers))
    account_id = account["id"]
    assert (await http.delete(f"/v1/accounts/{account_id}", headers=operator.headers)).status == 204

    # What a replica that still knew the key does meanwhile: the library stores a sample for the account, the
    # gateway a row of it.
    async with grpc.aio.insecure_channel(mesh.address("library"), options=channel_options()) as channel:
        await library_pb2_grpc.LibraryServiceStub(channel).CreateVoiceSample(
            library_pb2.CreateVoiceSampleRequest(
                audio=httpbody_pb2.HttpBody(content_type="audio/webm", data=HELLO), speaker_name="Late", transcript="Hello."
            ),
            metadata=((clients.ACCOUNT_ID_METADATA, str(account_id)),),
            timeout=120,
        )
    monkeypatch.setenv("LIBRARY_ADDR", mesh.address("library"))
    for name, value in mesh.env.items():
        if name.startswith("S3_"):  # the mesh's object store, where its audio lives
            monkeypatch.setenv(name, value)
    store = await Store.open(database.url)
    library = Library()
    library.start()
    try:
        await store.webhooks.secret(account_id, "whsec_late")
        storage = AudioStorage(ObjectStore(), store)
        deletion = AccountDeletion(Accounts(store.accounts), library, storage, lambda: 0)
        assert account_id not in await store.accounts.due_for_another_purge()  # its time has not come
        connection = await asyncpg.connect(database.url)
        try:
            await connection.execute("UPDATE gateway.accounts SET purge_again_at = now() WHERE id = $1", account_id)
            await deletion.purge_again()  # (or the mesh's gateway, whose round may come first)
            assert await connection.fetchval("SELECT count(*) FROM library.samples WHERE account_id = $1", account_id) == 0
            assert await connection.fetchval("SELECT count(*) FROM gateway.webhook_secrets WHERE account_id = $1", account_id) == 0
            assert await connection.fetchval("SELECT purge_again_at FROM gateway.accounts WHERE id = $1", account_id) is None
        finally:
            await connection.close()
    finally:
        await storage.objects.close()
        await library.close()
        await store.close()
