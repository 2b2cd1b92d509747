"""The gateway's audio in the object store (the real SeaweedFS), through the real mesh: generations'
WAVs and uploaded files are objects PostgreSQL names by key; deleting removes both; retention deletes
old audio and the history says so (410 audio_expired); with GATEWAY_AUDIO_REDIRECTS the audio routes
send clients to a presigned URL of the store; an account's voice data is erased everywhere."""

from __future__ import annotations

import asyncio
import datetime
import urllib.parse
import urllib.request
import uuid

import aiohttp
import asyncpg
import pytest

from runtime import objects
from services.gateway.generation.library import Library
from services.gateway.generation.storage import AudioStorage
from services.gateway.store import Store
from tests.gateway.conftest import HELLO, Account, assert_error, created, extra_gateway, make_key, upload_form, wait_for_models

GENERATIONS = "/v1/voice/generations"
# Target of issue 23: PostgreSQL keeps under 4 KB per stored generation and per sample.
ROW_BYTES_TARGET = 4096


@pytest.fixture(scope="module")
async def fay(key_env) -> Account:
    name = f"fay-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


@pytest.fixture(scope="module", autouse=True)
async def provider(http, fay):
    await wait_for_models(http, fay)


@pytest.fixture
async def store(object_server):
    async with objects.ObjectStore(object_server.settings) as opened:
        yield opened


@pytest.fixture
async def db(database):
    connection = await asyncpg.connect(database.url)
    yield connection
    await connection.close()


async def generated(http, account: Account, **body) -> tuple[dict, bytes]:
    body.setdefault("input", "[S1] Keep me in the bucket.")
    response = await http.post(GENERATIONS, json={"max_new_tokens": 256, **body}, headers=account.headers)
    assert response.status == 200, await response.text()
    audio = await response.read()
    generation = await created(await http.get(f"{GENERATIONS}/{response.headers['X-Generation-Id']}", headers=account.headers))
    return generation, audio


async def account_id(db, account: Account) -> int:
    return await db.fetchval("SELECT id FROM gateway.accounts WHERE name = $1", account.name)


async def keys_under(store: objects.ObjectStore, prefix: str) -> set[str]:
    return {item.key async for item in store.list_objects(prefix)}


async def test_a_generations_audio_is_an_object_its_row_names(http, fay, store, db):
    generation, audio = await generated(http, fay)
    row = await db.fetchrow(
        "SELECT audio_key, audio_bytes, pg_column_size(g.*) AS row_bytes FROM gateway.generations g WHERE id = $1",
        generation["id"],
    )
    assert row["audio_key"].startswith(f"generations/{await account_id(db, fay)}/{generation['id']}")
    assert await store.get(row["audio_key"]) == audio
    assert row["audio_bytes"] == len(audio)
    assert row["row_bytes"] < ROW_BYTES_TARGET
    # Sent as it is read from the store, with its length (no chunks of unknown size).
    response = await http.get(f"{GENERATIONS}/{generation['id']}/audio", headers=fay.headers)
    assert await response.read() == audio
    assert response.headers["Content-Length"] == str(len(audio)) and "Transfer-Encoding" not in response.headers


async def test_a_files_content_is_an_object_and_deleting_the_file_deletes_it(http, fay, store, db):
    form = aiohttp.FormData()
    form.add_field("content", HELLO, filename="hello.webm", content_type="audio/webm")
    file = await created(await http.post("/v1/files", data=form, headers=fay.headers))
    key = await db.fetchval("SELECT content_key FROM gateway.prediction_files WHERE id = $1", file["id"])
    assert await store.get(key) == HELLO
    response = await http.get(f"/v1/files/{file['id']}/content", headers={**fay.headers, "Range": "bytes=0-9"})
    assert response.status == 206 and await response.read() == HELLO[:10]
    assert (await http.delete(f"/v1/files/{file['id']}", headers=fay.headers)).status == 204
    with pytest.raises(objects.ObjectNotFound):
        await store.head(key)


async def test_deleting_a_generation_deletes_its_object(http, fay, store, db):
    generation, _ = await generated(http, fay)
    key = await db.fetchval("SELECT audio_key FROM gateway.generations WHERE id = $1", generation["id"])
    assert (await http.delete(f"{GENERATIONS}/{generation['id']}", headers=fay.headers)).status == 204
    with pytest.raises(objects.ObjectNotFound):
        await store.head(key)


async def test_audio_past_its_retention_is_deleted_and_answers_410_while_the_record_stays(
    http, fay, store, db, database, object_server, anonymous_http
):
    retention = 30 * 24 * 3600.0
    expired, _ = await generated(http, fay, visibility="unlisted")
    kept, kept_audio = await generated(http, fay)
    now = datetime.datetime.now(datetime.UTC)
    just = datetime.timedelta(seconds=retention)
    # One ended a minute past the retention, the other a minute short of it.
    await db.execute("UPDATE gateway.generations SET end_time = $2 WHERE id = $1", expired["id"], now - just - datetime.timedelta(minutes=1))
    await db.execute("UPDATE gateway.generations SET end_time = $2 WHERE id = $1", kept["id"], now - just + datetime.timedelta(minutes=1))
    key = await db.fetchval("SELECT audio_key FROM gateway.generations WHERE id = $1", expired["id"])

    gateway_store = await Store.open(database.url)
    try:
        swept = await AudioStorage(store, gateway_store).sweep(grace_seconds=3600, retention_seconds=retention)
    finally:
        await gateway_store.close()
    assert swept["expired"] >= 1

    with pytest.raises(objects.ObjectNotFound):
        await store.head(key)
    record = await created(await http.get(f"{GENERATIONS}/{expired['id']}", headers=fay.headers))
    assert (record["status"], record.get("audio_expired")) == ("succeeded", True)
    assert not record["audio_url"]  # nothing to hand out
    await assert_error(await http.get(f"{GENERATIONS}/{expired['id']}/audio", headers=fay.headers), 410, "audio_expired")
    share = urllib.parse.urlsplit(expired["share_url"]).path
    await assert_error(await anonymous_http.get(share), 410, "audio_expired")
    # A signed URL says so only with its signature right: an altered one is as unknown as ever.
    signed = urllib.parse.urlsplit(expired["audio_url"])
    await assert_error(await anonymous_http.get(f"{signed.path}?{signed.query}"), 410, "audio_expired")
    await assert_error(await anonymous_http.get(f"{signed.path}?{signed.query}x"), 404, "not_found")

    # A minute short of the retention: kept.
    response = await http.get(f"{GENERATIONS}/{kept['id']}/audio", headers=fay.headers)
    assert response.status == 200 and await response.read() == kept_audio


@pytest.fixture
async def anonymous_http(mesh):
    async with aiohttp.ClientSession(base_url=mesh.http_url) as session:
        yield session


async def test_an_object_no_row_names_is_swept_once_older_than_the_grace_period(http, fay, store, database, db):
    generation, audio = await generated(http, fay)
    named = await db.fetchval("SELECT audio_key FROM gateway.generations WHERE id = $1", generation["id"])
    # What a gateway that died between storing the audio and committing its row leaves.
    orphan = f"generations/{await account_id(db, fay)}/{generation['id']}-crashed.wav"
    await store.put(orphan, b"RIFF")
    gateway_store = await Store.open(database.url)
    try:
        storage = AudioStorage(store, gateway_store)
        await storage.sweep(grace_seconds=3600, retention_seconds=0)
        assert orphan in await keys_under(store, orphan)  # younger than the grace period: maybe an upload under way
        await asyncio.sleep(1.5)
        await storage.sweep(grace_seconds=1, retention_seconds=0)
        assert orphan not in await keys_under(store, orphan)
    finally:
        await gateway_store.close()
    assert await store.get(named) == audio  # what a row names stays, however old


async def test_with_redirects_the_audio_is_handed_out_by_the_store(mesh, http, fay, object_server):
    generation, audio = await generated(http, fay)
    public = object_server.server.endpoint_url.replace("127.0.0.1", "localhost")
    async with extra_gateway(
        mesh, GATEWAY_AUDIO_REDIRECTS="true", S3_PUBLIC_ENDPOINT_URL=public, S3_PRESIGNED_URL_SECONDS="120"
    ) as gateway, aiohttp.ClientSession(base_url=f"http://127.0.0.1:{gateway.env['GATEWAY_HTTP_PORT']}") as other:
        response = await other.get(f"{GENERATIONS}/{generation['id']}/audio", headers=fay.headers, allow_redirects=False)
        assert response.status == 307, await response.text()
        location = response.headers["Location"]
        assert location.startswith(public + "/")
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["X-Amz-Expires"] == ["120"]
        # Anyone with it fetches the audio from the store, a range of it too, without a key.
        assert await asyncio.to_thread(lambda: urllib.request.urlopen(location, timeout=30).read()) == audio
        async with aiohttp.ClientSession() as outside:
            async with outside.get(location, headers={"Range": "bytes=0-43"}) as ranged:
                assert ranged.status == 206 and await ranged.read() == audio[:44]
        # The signed audio_url goes there too, once its signature is checked; clients that follow
        # redirects (urllib here) get the audio.
        signed = urllib.parse.urlsplit(generation["audio_url"])
        path = f"{signed.path}?{signed.query}"
        url = f"http://127.0.0.1:{gateway.env['GATEWAY_HTTP_PORT']}{path}"
        assert await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=30).read()) == audio
        await assert_error(await other.get(path + "0", allow_redirects=False), 404, "not_found")
        # The dashboard's player may play what the store sends (its CSP); the mesh's own gateway's may not.
        page = await other.get("/")
        assert f"media-src 'self' blob: {public};" in page.headers["Content-Security-Policy"]
        assert "media-src 'self' blob:;" in (await http.get("/")).headers["Content-Security-Policy"]
        # A voice sample's audio is never handed out so: the gateway sends it.
        sample = await created(await upload_form(http, fay, HELLO, "Never redirected", transcript="hello"))
        response = await other.get(f"/v1/voice/samples/{sample['id']}/audio", headers=fay.headers, allow_redirects=False)
        assert response.status == 200 and (await response.read())[:4] == b"RIFF"


async def test_an_accounts_voice_data_is_erased_everywhere_it_lives(http, key_env, store, db, database, mesh, monkeypatch):
    name = f"gone-{uuid.uuid4().hex[:8]}"
    account = Account(name, make_key(name, key_env))
    owner = await account_id(db, account)
    sample = await created(await upload_form(http, account, HELLO, "Erased", transcript="hello"))
    await generated(http, account, speakers={"S1": sample["id"]})
    form = aiohttp.FormData()
    form.add_field("content", HELLO, filename="hello.webm", content_type="audio/webm")
    await created(await http.post("/v1/files", data=form, headers=account.headers))
    prefixes = [f"samples/{owner}/", f"generations/{owner}/", f"files/{owner}/"]
    assert all([await keys_under(store, prefix) for prefix in prefixes])

    monkeypatch.setenv("LIBRARY_ADDR", mesh.address("library"))
    library = Library()
    library.start()
    gateway_store = await Store.open(database.url)
    try:
        erased = await AudioStorage(store, gateway_store).erase_account(owner, library)
    finally:
        await gateway_store.close()
        await library.close()
    assert (erased.samples, erased.generations, erased.files, erased.objects) == (1, 1, 1, 4)
    for prefix in prefixes:
        assert await keys_under(store, prefix) == set(), prefix
    assert await db.fetchval("SELECT count(*) FROM library.samples WHERE account_id = $1", owner) == 0
    assert await db.fetchval("SELECT count(*) FROM gateway.generations WHERE account_id = $1", owner) == 0
    assert await db.fetchval("SELECT count(*) FROM gateway.prediction_files WHERE account_id = $1", owner) == 0
    await assert_error(await http.get(f"/v1/voice/samples/{sample['id']}/audio", headers=account.headers), 404, "not_found")
