"""Audio URLs fetched without a key (a generation's signed `audio_url`, its `share_url`), HEAD and
byte ranges on every audio answer, revocation (private, DELETE), through the real mesh."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid

import aiohttp
import pytest

from services.gateway.edge import ranges
from services.gateway.generation import audio_urls
from tests.gateway.conftest import Account, assert_error, created, extra_gateway, make_key, wait_for_models

GENERATIONS = "/v1/voice/generations"


@pytest.fixture(scope="module")
async def erin(key_env) -> Account:
    name = f"erin-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


@pytest.fixture(scope="module", autouse=True)
async def provider(http, erin):
    await wait_for_models(http, erin)


@pytest.fixture
async def anonymous(mesh):
    """A client of the mesh's gateway that sends no key."""
    async with aiohttp.ClientSession(base_url=mesh.http_url) as session:
        yield session


async def generated(http, account: Account, **body) -> tuple[dict, bytes]:
    """A new generation (256 frames of the tiny model, a second or two) as the history has it, and its audio."""
    body.setdefault("input", "[S1] Fetch me without a key.")
    response = await http.post(GENERATIONS, json={"max_new_tokens": 256, **body}, headers=account.headers)
    assert response.status == 200, await response.text()
    audio = await response.read()
    generation = await created(await http.get(f"{GENERATIONS}/{response.headers['X-Generation-Id']}", headers=account.headers))
    return generation, audio


def path_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}"


def with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = {**dict(urllib.parse.parse_qsl(parts.query)), **changes}
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# --- units ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, answer",
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),  # more than there is: all of it
        ("bytes=990-5000", (990, 999)),  # cut at the end
        ("Bytes = 1 - 2", (1, 2)),
        ("bytes=0-1,5-6", None),  # several: answered whole
        ("bytes=5-4", None),  # not a range: ignored
        ("items=0-1", None),
        ("bytes=-", None),
        ("bytes=0-99999999999999999999", None),  # no answer is that long: ignored
        ("bytes=1000-", ranges.Unsatisfiable),
        ("bytes=-0", ranges.Unsatisfiable),
    ],
)
def test_one_byte_range_is_read_as_rfc_9110_says(header, answer):
    if answer is ranges.Unsatisfiable:
        with pytest.raises(ranges.Unsatisfiable):
            ranges.byte_range(header, 1000)
    else:
        assert ranges.byte_range(header, 1000) == answer


class FixedKey:
    """The key table's one operation, with a key of the test's."""

    async def key(self, made: bytes) -> bytes:
        return b"k" * 32


async def test_a_signed_url_works_until_its_expiry_time_and_not_from_then_on():
    now = [1_000_000.0]
    urls = audio_urls.AudioUrls(FixedKey(), lambda: "https://voice.example.com/", lambda: 60, clock=lambda: now[0])
    await urls.start()
    url = urls.audio_url("gen_abc", epoch=3)
    # The end of the next 60 s window: good for at least 60 s and at most 120 s.
    assert url.startswith("https://voice.example.com/v1/signed/generations/gen_abc/audio?expires=1000080&signature=")
    signature = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["signature"]
    assert len(signature) == 43 and "=" not in signature  # 256 bits, base64url, unpadded
    now[0] = 1_000_019.9
    assert urls.audio_url("gen_abc", epoch=3) == url  # the same URL within one window
    now[0] = 1_000_020.0
    assert urls.audio_url("gen_abc", epoch=3) != url  # the next window's is good for longer
    now[0] = 1_000_079.9
    urls.check("gen_abc", 1_000_080, signature, epoch=3)
    now[0] = 1_000_080.0
    with pytest.raises(Exception) as expired:
        urls.check("gen_abc", 1_000_080, signature, epoch=3)
    assert expired.value.reason == "URL_EXPIRED"
    for generation_id, expires, epoch in (("gen_abd", 1_000_080, 3), ("gen_abc", 1_000_081, 3), ("gen_abc", 1_000_080, 4)):
        with pytest.raises(Exception) as refused:
            urls.check(generation_id, expires, signature, epoch)
        assert refused.value.reason == "NOT_FOUND"


# --- a generation's audio_url ---------------------------------------------------------


async def test_the_audio_url_plays_without_a_key_with_head_and_byte_ranges(http, erin, anonymous, mesh):
    generation, audio = await generated(http, erin)
    url = generation["audio_url"]
    assert url.startswith(f"{mesh.http_url}/v1/signed/generations/{generation['id']}/audio?expires=")
    expires = int(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["expires"])
    assert 3590 <= expires - time.time() <= 7200  # one to two GATEWAY_SIGNED_URL_SECONDS (its default, 3600)
    size = len(audio)

    whole = await anonymous.get(url)
    assert (whole.status, whole.headers["Content-Type"], await whole.read()) == (200, "audio/wav", audio)
    assert whole.headers["Accept-Ranges"] == "bytes"

    head = await anonymous.head(url)
    assert (head.status, head.headers["Content-Type"], int(head.headers["Content-Length"])) == (200, "audio/wav", size)
    assert await head.read() == b""

    first = await anonymous.get(url, headers={"Range": "bytes=0-99"})
    assert (first.status, first.headers["Content-Range"], await first.read()) == (206, f"bytes 0-99/{size}", audio[:100])
    assert int(first.headers["Content-Length"]) == 100
    tail = await anonymous.get(url, headers={"Range": "bytes=-10"})
    assert (tail.status, tail.headers["Content-Range"], await tail.read()) == (206, f"bytes {size - 10}-{size - 1}/{size}", audio[-10:])
    rest = await anonymous.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert (rest.status, await rest.read()) == (206, audio[-5:])
    several = await anonymous.get(url, headers={"Range": "bytes=0-1,4-5"})
    assert (several.status, await several.read()) == (200, audio)

    beyond = await anonymous.get(url, headers={"Range": f"bytes={size}-"})
    await assert_error(beyond, 416, "range_not_satisfiable")
    assert beyond.headers["Content-Range"] == f"bytes */{size}"


async def test_an_altered_signed_url_is_as_unknown_as_a_made_up_one(http, erin, anonymous):
    generation, _ = await generated(http, erin)
    other, _ = await generated(http, erin, input="[S1] Another one.")
    url = path_of(generation["audio_url"])
    signature = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["signature"]
    expires = int(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["expires"])
    altered = [
        with_query(url, signature=("A" if signature[0] != "A" else "B") + signature[1:]),
        with_query(url, expires=str(expires + 3600)),  # a longer life
        url.replace(generation["id"], other["id"]),  # another generation
        url.replace(generation["id"], "gen_" + "0" * 24),
        url.split("&signature=")[0],
        f"/v1/signed/generations/{generation['id']}/audio",
    ]
    for changed in altered:
        await assert_error(await anonymous.get(changed), 404, "not_found")
        assert (await anonymous.head(changed)).status == 404
    assert (await anonymous.get(url)).status == 200  # the URL as it was handed out


async def test_a_url_signed_by_one_replica_works_on_another_until_its_expiry(mesh, http, erin):
    seconds = 3
    async with extra_gateway(mesh, GATEWAY_SIGNED_URL_SECONDS=str(seconds)) as short:
        async with aiohttp.ClientSession(base_url=short.http_url) as replica:
            await wait_for_models(replica, erin)
            generation, audio = await generated(replica, erin)
            expires = int(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(generation["audio_url"]).query))["expires"])
            assert expires - 2 * seconds <= time.time() <= expires - seconds + 1  # one to two windows of life
            url = path_of(generation["audio_url"])
            async with aiohttp.ClientSession() as anonymous:
                # Checked by the mesh's own gateway: the key is the store's, not the process's.
                assert await (await anonymous.get(mesh.http_url + url)).read() == audio
                await asyncio.sleep(max(0.0, expires + 0.1 - time.time()))
                for gateway in (mesh.http_url, short.http_url):
                    error = await assert_error(await anonymous.get(gateway + url), 403, "url_expired")
                    assert "fresh" in error["message"]
            # Read again, the generation has a fresh URL that works.
            again = await created(await http.get(f"{GENERATIONS}/{generation['id']}", headers=erin.headers))
            async with aiohttp.ClientSession() as anonymous:
                assert await (await anonymous.get(again["audio_url"])).read() == audio


async def test_making_a_generation_private_revokes_every_signed_url_handed_out(http, erin, anonymous):
    generation, audio = await generated(http, erin, visibility="unlisted")
    path = f"{GENERATIONS}/{generation['id']}"
    handed_out = [generation["audio_url"], (await created(await http.get(path, headers=erin.headers)))["audio_url"]]
    for url in handed_out:
        assert (await anonymous.get(url)).status == 200
    private = await created(await http.patch(path, json={"visibility": "private"}, headers=erin.headers))
    for url in [*handed_out, generation["share_url"]]:
        await assert_error(await anonymous.get(url), 404, "not_found")
    # The new URL works, until the generation is made private once more (although it already is).
    assert await (await anonymous.get(private["audio_url"])).read() == audio
    await created(await http.patch(path, json={"visibility": "private"}, headers=erin.headers))
    await assert_error(await anonymous.get(private["audio_url"]), 404, "not_found")
    # Sharing it or filing it revokes nothing.
    fresh = await created(await http.patch(path, json={"visibility": "public"}, headers=erin.headers))
    await created(await http.patch(path, json={"collection": "kept"}, headers=erin.headers))
    assert (await anonymous.get(fresh["audio_url"])).status == 200


# --- deleting ---------------------------------------------------------------------------


async def test_a_deleted_generation_is_gone_with_its_urls(http, erin, anonymous, accounts):
    generation, _ = await generated(http, erin, visibility="unlisted")
    path = f"{GENERATIONS}/{generation['id']}"
    await assert_error(await http.delete(path, headers=accounts[0].headers), 404, "not_found")  # not theirs
    deleted = await http.delete(path, headers=erin.headers)
    assert (deleted.status, await deleted.read()) == (204, b"")
    for url in (generation["audio_url"], generation["share_url"]):
        await assert_error(await anonymous.get(url), 404, "not_found")
    for url in (path, path + "/audio"):
        await assert_error(await http.get(url, headers=erin.headers), 404, "not_found")
    listed = await created(await http.get(GENERATIONS, params={"page_size": 100}, headers=erin.headers))
    assert generation["id"] not in [item["id"] for item in listed["generations"]]
    await assert_error(await http.delete(path, headers=erin.headers), 404, "not_found")
    await assert_error(await anonymous.delete(path), 401, "unauthorized")


async def test_a_generation_under_way_is_not_deleted_until_it_has_ended(http, erin):
    response = await http.post(
        "/v1/predictions",
        json={"version": "nari-labs/dia", "input": {"text": "[S1] A long one.", "max_new_tokens": 4096}},
        headers=erin.headers,
    )
    prediction = await created(response)
    path = f"{GENERATIONS}/{prediction['id']}"
    error = await assert_error(await http.delete(path, headers=erin.headers), 409, "generation_under_way")
    assert "cancel" in error["message"]
    assert (await created(await http.get(path, headers=erin.headers)))["status"] in ("queued", "running")
    canceled = await created(await http.post(f"/v1/predictions/{prediction['id']}/cancel", json={}, headers=erin.headers))
    assert canceled["status"] == "canceled"
    assert (await http.delete(path, headers=erin.headers)).status == 204
    # Its prediction was the same record.
    await assert_error(await http.get(f"/v1/predictions/{prediction['id']}", headers=erin.headers), 404, "not_found")


# --- the key-authenticated and shared URLs: HEAD and ranges too --------------------------


async def test_the_keyed_audio_url_still_needs_the_key_and_answers_head_and_ranges(http, erin, anonymous):
    generation, audio = await generated(http, erin)
    path = f"{GENERATIONS}/{generation['id']}/audio"
    assert await (await http.get(path, headers=erin.headers)).read() == audio
    head = await http.head(path, headers=erin.headers)
    assert (head.status, int(head.headers["Content-Length"]), head.headers["Accept-Ranges"]) == (200, len(audio), "bytes")
    assert await head.read() == b""
    unkeyed = await anonymous.head(path)
    assert (unkeyed.status, unkeyed.headers["WWW-Authenticate"]) == (401, "Bearer")
    await assert_error(await anonymous.get(path), 401, "unauthorized")
    part = await http.get(path, headers={**erin.headers, "Range": "bytes=44-"})
    assert (part.status, part.headers["Content-Range"], await part.read()) == (206, f"bytes 44-{len(audio) - 1}/{len(audio)}", audio[44:])
    # JSON answers have no ranges: a Range is ignored.
    whole = await http.get(f"{GENERATIONS}/{generation['id']}", headers={**erin.headers, "Range": "bytes=0-1"})
    assert whole.status == 200 and "Accept-Ranges" not in whole.headers
    assert (await http.head(f"{GENERATIONS}/{generation['id']}", headers=erin.headers)).status == 200


async def test_a_share_url_answers_head_and_ranges_without_a_key(http, erin, anonymous):
    generation, audio = await generated(http, erin, visibility="public")
    head = await anonymous.head(generation["share_url"])
    assert (head.status, int(head.headers["Content-Length"]), await head.read()) == (200, len(audio), b"")
    part = await anonymous.get(generation["share_url"], headers={"Range": "bytes=0-3"})
    assert (part.status, await part.read()) == (206, b"RIFF")
    head = await anonymous.head("/v1/shared/generations/made-up/audio")
    assert head.status == 404


async def test_head_is_allowed_wherever_get_is(http, erin):
    response = await http.put(f"{GENERATIONS}/gen_whatever", json={}, headers=erin.headers)
    await assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}
    response = await http.head(GENERATIONS, headers=erin.headers)
    assert response.status == 200 and response.headers["Content-Type"] == "application/json"


async def test_openapi_documents_the_signed_url_delete_and_byte_ranges(http):
    paths = (await (await http.get("/openapi.json")).json())["paths"]
    signed = paths["/v1/signed/generations/{id}/audio"]["get"]
    assert signed["security"] == []
    assert {p["name"] for p in signed["parameters"]} == {"id", "expires", "signature", "Range"}
    assert set(signed["responses"]) >= {"200", "206", "404", "416"}
    assert signed["responses"]["206"]["headers"]["Content-Range"]["required"] is True
    assert "audio/wav" in signed["responses"]["206"]["content"]
    assert "Range" not in {p["name"] for p in paths["/v1/voice/generations/{id}"]["get"]["parameters"]}
    assert "206" not in paths["/v1/voice/generations/{id}"]["get"]["responses"]
    assert set(paths["/v1/voice/generations/{id}"]["delete"]["responses"]) >= {"204", "404"}
