"""runtime/objects.py against the real SeaweedFS (the session's `object_server`,
started as `make run` starts it): what a service that keeps audio there can
count on, and the errors it gets when the store is not there."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import aiohttp.web
import grpc
import pytest
from aiobotocore.session import AioSession

from runtime import objects
from runtime.errors import ApiError
from tests.conftest import free_port

MIB = 1024 * 1024


@pytest.fixture
async def store(object_server):
    async with objects.ObjectStore(object_server.settings) as opened:
        yield opened


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


def assert_unavailable(error: ApiError, retry: bool = True) -> None:
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"), error
    assert (error.retry_after is not None) == retry, error.retry_after
    assert "127.0.0.1" not in error.message and "Signature" not in error.message, error.message


async def test_put_get_head_and_delete_which_may_be_repeated(store, prefix):
    key = prefix + "sample.wav"
    audio = os.urandom(300_000)
    stored = await store.put(key, audio, content_type="audio/wav")
    assert stored.size == len(audio) and stored.etag

    assert await store.get(key) == audio
    info = await store.head(key)
    assert (info.key, info.size, info.content_type, info.etag) == (key, len(audio), "audio/wav", stored.etag)
    assert info.last_modified is not None

    replaced = os.urandom(1000)
    await store.put(key, replaced)  # a put replaces
    assert await store.get(key) == replaced

    await store.delete(key)
    for read in (store.get(key), store.head(key), store.get_range(key, 0, 10)):
        with pytest.raises(objects.ObjectNotFound) as caught:
            await read
        assert (caught.value.code, caught.value.reason, caught.value.key) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", key)
    await store.delete(key)  # gone already: no error, so a retried delete is safe
    await store.delete(prefix + "never-stored.wav")


async def test_ranges_read_only_the_bytes_asked_for(store, prefix):
    key = prefix + "ranged.wav"
    audio = bytes(range(256)) * 4000  # 1,024,000 bytes
    await store.put(key, audio)

    assert await store.get_range(key, 0, 44) == audio[:44]  # a WAV header
    assert await store.get_range(key, 500_000, 1000) == audio[500_000:501_000]
    assert await store.get_range(key, len(audio) - 10, 100) == audio[-10:]  # the end comes first
    async with store.download(key, start=1000, end=1999) as part:
        assert (part.start, part.length, part.size) == (1000, 1000, len(audio))
        assert await part.read() == audio[1000:2000]
    async with store.download(key, start=len(audio) - 5) as tail:  # to the end
        assert await tail.read() == audio[-5:]

    with pytest.raises(ApiError) as caught:
        await store.get_range(key, len(audio), 10)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.OUT_OF_RANGE, "INVALID_RANGE")
    with pytest.raises(ValueError):
        await store.get_range(key, -1, 10)


async def test_a_download_streams_in_pieces_and_one_left_early_frees_its_connection(object_server, prefix):
    # One connection in all: a download left unread would hold it, and the next call would wait forever.
    settings = dataclasses.replace(object_server.settings, max_connections=1)
    async with objects.ObjectStore(settings) as store:
        key = prefix + "long.wav"
        audio = os.urandom(3 * MIB + 123)
        await store.put(key, audio)
        pieces = []
        async with store.download(key, piece_bytes=64 * 1024) as download:
            assert (download.size, download.length, download.start) == (len(audio), len(audio), 0)
            async for piece in download:
                pieces.append(piece)
        assert b"".join(pieces) == audio
        assert len(pieces) >= len(audio) // (64 * 1024) and max(map(len, pieces)) <= 64 * 1024

        async with asyncio.timeout(30):  # not waiting forever for the connection
            for _ in range(3):
                async with store.download(key) as download:
                    async for _piece in download:
                        break  # a listener who stops after the first piece
            assert await store.get_range(key, 0, 4) == audio[:4]


async def test_list_by_prefix_finds_every_key_under_it_across_pages(store, prefix):
    keys = [f"{prefix}a/{n}.wav" for n in range(5)]
    for key in keys + [prefix + "b/0.wav", prefix + "a.wav"]:
        await store.put(key, b"RIFF")
    listed = [item async for item in store.list_objects(prefix + "a/", page_size=2)]  # three pages
    assert [item.key for item in listed] == keys
    assert {item.size for item in listed} == {4}
    assert [item async for item in store.list_objects(prefix + "nothing/")] == []


async def test_a_presigned_url_serves_a_plain_http_client_until_it_expires(store, object_server, prefix):
    key = prefix + "shared dialogue.wav"  # a space, escaped in the URL
    audio = os.urandom(50_000)
    await store.put(key, audio, content_type="audio/wav")
    url = await store.presigned_url(key, expires_in=2)
    assert url.startswith(object_server.server.endpoint_url + "/")
    async with aiohttp.ClientSession() as http:  # no credentials of any kind
        async with http.get(url) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "audio/wav"
            assert await answer.read() == audio
        # The same object without the signature, or with another, is refused.
        parts = urlsplit(url)
        async with http.get(urlunsplit(parts._replace(query=""))) as answer:
            assert answer.status == 403
        query = dict(parse_qsl(parts.query))
        query["X-Amz-Signature"] = "0" * 64
        async with http.get(urlunsplit(parts._replace(query=urlencode(query)))) as answer:
            assert answer.status == 403
        await asyncio.sleep(3)
        async with http.get(url) as answer:
            assert answer.status == 403, "the URL outlived its expiry"
    with pytest.raises(ValueError):
        await store.presigned_url(key, expires_in=0)
    with pytest.raises(ValueError):
        await store.presigned_url(key, expires_in=objects.MAX_PRESIGNED_SECONDS + 1)


async def test_presigned_urls_name_the_public_endpoint_and_last_the_configured_time(object_server, prefix):
    # Users reach the store at another address than the services do (here localhost for 127.0.0.1).
    public = object_server.server.endpoint_url.replace("127.0.0.1", "localhost")
    settings = dataclasses.replace(object_server.settings, public_endpoint_url=public, presigned_url_seconds=600)
    async with objects.ObjectStore(settings) as store:
        await store.put(prefix + "public.wav", b"RIFF-public")
        url = await store.presigned_url(prefix + "public.wav")
    assert url.startswith(public + "/")
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == "600"
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        assert answer.status == 200 and await answer.read() == b"RIFF-public"


def raw_client(object_server):
    settings = object_server.settings
    return AioSession().create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
    )


async def test_a_streamed_upload_goes_in_parts_and_appears_whole(object_server, prefix):
    settings = dataclasses.replace(object_server.settings, part_bytes=objects.MIN_PART_BYTES)
    audio = os.urandom(12 * MIB + 5)

    async def pieces(data: bytes, size: int = MIB):
        for start in range(0, len(data), size):
            yield data[start : start + size]
            await asyncio.sleep(0)

    async with objects.ObjectStore(settings) as store:
        stored = await store.put_stream(prefix + "generated.wav", pieces(audio), content_type="audio/wav")
        assert stored.size == len(audio)
        assert stored.etag.strip('"').endswith("-3")  # S3's mark of a 3-part upload
        assert await store.get(prefix + "generated.wav") == audio
        assert (await store.head(prefix + "generated.wav")).content_type == "audio/wav"

        small = os.urandom(100_000)  # within one part: a single PUT
        stored = await store.put_stream(prefix + "short.wav", pieces(small, 30_000))
        assert "-" not in stored.etag and await store.get(prefix + "short.wav") == small
        empty = await store.put_stream(prefix + "empty.wav", pieces(b""))
        assert empty.size == 0 and await store.get(prefix + "empty.wav") == b""


async def test_a_streamed_upload_that_fails_midway_leaves_nothing_behind(object_server, prefix):
    settings = dataclasses.replace(object_server.settings, part_bytes=objects.MIN_PART_BYTES)
    key = prefix + "broken.wav"

    async def breaks_after_two_parts():
        for _ in range(11):
            yield os.urandom(MIB)
        raise ConnectionResetError("the synth went away")

    async with objects.ObjectStore(settings) as store:
        with pytest.raises(ConnectionResetError):
            await store.put_stream(key, breaks_after_two_parts())
        with pytest.raises(objects.ObjectNotFound):
            await store.head(key)
    async with raw_client(object_server) as client:
        pending = await client.list_multipart_uploads(Bucket=object_server.settings.bucket, Prefix=prefix)
    assert pending.get("Uploads", []) == [], pending["Uploads"]


async def test_create_bucket_makes_it_once(object_server):
    settings = dataclasses.replace(object_server.settings, bucket=f"made-{uuid.uuid4().hex[:8]}")
    async with objects.ObjectStore(settings) as store:
        assert not await store.is_reachable()  # no bucket yet
        assert await store.create_bucket() is True
        assert await store.create_bucket() is False
        assert await store.is_reachable()
        await store.put("k.wav", b"RIFF")
        assert await store.get("k.wav") == b"RIFF"


async def test_an_unreachable_store_is_storage_unavailable_at_once(object_server):
    # Nothing listens there: refused at once, one try.
    nowhere = dataclasses.replace(
        object_server.settings, endpoint_url=f"http://127.0.0.1:{free_port()}", attempts=1, timeout_seconds=2
    )
    async with objects.ObjectStore(nowhere) as store:
        assert not await store.is_reachable()
        for call in (store.put("k.wav", b"RIFF"), store.get("k.wav"), store.head("k.wav"), store.delete("k.wav")):
            with pytest.raises(ApiError) as caught:
                async with asyncio.timeout(20):
                    await call
            assert_unavailable(caught.value)


async def test_wrong_credentials_or_a_missing_bucket_are_storage_unavailable_not_retried(object_server):
    wrong = dataclasses.replace(object_server.settings, secret_access_key="not-the-secret-key-at-all")
    async with objects.ObjectStore(wrong) as store:
        assert not await store.is_reachable()
        for call in (store.put("k.wav", b"RIFF"), store.get("k.wav")):
            with pytest.raises(ApiError) as caught:
                await call
            assert_unavailable(caught.value, retry=False)
    missing = dataclasses.replace(object_server.settings, bucket=f"gone-{uuid.uuid4().hex[:8]}")
    async with objects.ObjectStore(missing) as store:
        assert not await store.is_reachable()
        with pytest.raises(ApiError) as caught:
            await store.get("k.wav")
        assert_unavailable(caught.value, retry=False)


async def test_whole_objects_are_read_by_a_get_signed_here_whatever_their_keys(store, prefix):
    # The store's own endpoint with keys: get() signs its GET itself; the key is encoded as S3 wants it.
    assert store.settings.endpoint_url and store.settings.access_key_id
    for name in ("plain.wav", "with space+plus é~(1).wav", "deep/er/ü.wav", "odd%41%2 key!*'@$&=;:,.wav"):
        audio = os.urandom(70_000)
        await store.put(prefix + name, audio)
        assert await store.get(prefix + name) == audio
        async with store.download(prefix + name) as download:  # botocore's GET reads the same
            assert await download.read() == audio
    with pytest.raises(objects.ObjectNotFound):
        await store.get(prefix + "never stored.wav")


class FlakyStore:
    """An S3 endpoint that answers 500 InternalError `failures` times, then the object."""

    def __init__(self, failures: int) -> None:
        self.failures, self.requests = failures, 0

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.requests += 1
        assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        if self.requests <= self.failures:
            return aiohttp.web.Response(status=500, body=b"<Error><Code>InternalError</Code></Error>")
        return aiohttp.web.Response(body=b"RIFF")


@pytest.mark.parametrize("failures, attempts", [(1, 2), (2, 2)])
async def test_a_signed_get_answered_5xx_is_tried_again_up_to_its_attempts(object_server, failures, attempts):
    flaky = FlakyStore(failures)
    app = aiohttp.web.Application()
    app.router.add_get("/{tail:.*}", flaky.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    settings = dataclasses.replace(object_server.settings, endpoint_url=f"http://127.0.0.1:{port}", attempts=attempts)
    try:
        async with objects.ObjectStore(settings) as store:
            if failures < attempts:
                assert await store.get("k.wav") == b"RIFF"
            else:
                with pytest.raises(ApiError) as caught:
                    await store.get("k.wav")
                assert_unavailable(caught.value)
        assert flaky.requests == min(failures + 1, attempts)
    finally:
        await runner.cleanup()


def test_keys_that_are_no_keys_of_ours_are_refused_before_any_request():
    for key in ("", "/leading", "a/../b", "x" * 1025):
        with pytest.raises(ValueError):
            objects.check_key(key)
    assert objects.check_key("samples/12/ab cd é.wav") == "samples/12/ab cd é.wav"


def test_settings_refuse_half_a_key_pair_and_limits_s3_does_not_allow():
    with pytest.raises(SystemExit, match="S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY"):
        objects.StoreSettings.from_environment({"S3_ACCESS_KEY_ID": "key"})
    for name, bad in [
        ("S3_MULTIPART_PART_BYTES", str(5 * MIB - 1)),  # S3's smallest part
        ("S3_PRESIGNED_URL_SECONDS", str(7 * 24 * 3600 + 1)),  # SigV4's longest
        ("S3_ATTEMPTS", "0"),
        ("S3_ADDRESSING_STYLE", "dns"),
    ]:
        with pytest.raises(SystemExit, match=name):
            objects.StoreSettings.from_environment({name: bad})
    settings = objects.StoreSettings.from_environment(
        {"S3_ENDPOINT_URL": "http://s3.local:9000", "S3_ACCESS_KEY_ID": "k", "S3_SECRET_ACCESS_KEY": "s"}
    )
    # What `make run` hands on is what a service reads back.
    assert objects.StoreSettings.from_environment(settings.environment()) == settings
