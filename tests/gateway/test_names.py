"""Names refuse control and invisible characters, end to end: a sample's speaker_name and
collection, a generation's collection, a file's name. A name holding a zero-width space, a
bidirectional control or a newline reads like another name (or hides one) wherever it is
shown; it is 400 invalid_parameter naming the field, and nothing is stored or changed."""

from __future__ import annotations

import aiohttp
import pytest

from tests.gateway.conftest import HELLO, assert_error, created, upload_form

# Each looks like "Ada" (or nearly) wherever it is shown.
HIDDEN = ["Ada\u200b", "A\u200dda", "\ufeffAda", "Ada\u2060", "\u202eadA", "Ada\n", "Ada\tLovelace", "Ada\u2028"]


async def sample_ids(http, account) -> set[int]:
    listing = await (await http.get("/v1/voice/samples", params={"page_size": "100"}, headers=account.headers)).json()
    return {sample["id"] for sample in listing["voice_samples"]}


async def history_ids(http, account) -> set[str]:
    listing = await (await http.get("/v1/voice/generations", params={"page_size": "100"}, headers=account.headers)).json()
    return {generation["id"] for generation in listing["generations"]}


@pytest.mark.parametrize("field", ["speaker_name", "collection"])
async def test_a_sample_named_with_hidden_characters_is_refused_and_not_stored(http, accounts, field):
    alice, _ = accounts
    before = await sample_ids(http, alice)
    for name in HIDDEN:
        fields = {"transcript": "Hello world.", field: name}
        speaker = fields.pop("speaker_name", "Ada")
        error = await assert_error(await upload_form(http, alice, HELLO, speaker, **fields), 400, "invalid_parameter", field)
        assert "U+" in error["message"], error
        # A raw upload with the fields as query parameters alike.
        response = await http.post(
            "/v1/voice/samples",
            data=HELLO,
            params={"speaker_name": speaker, **fields},
            headers={**alice.headers, "Content-Type": "audio/webm"},
        )
        await assert_error(response, 400, "invalid_parameter", field)
    assert await sample_ids(http, alice) == before
    # The same name without the hidden character is stored.
    stored = await created(await upload_form(http, alice, HELLO, "Ada", transcript="Hello world.", collection="Talks"))
    assert (stored["speaker_name"], stored["collection"]) == ("Ada", "Talks")


@pytest.mark.parametrize("field", ["speaker_name", "collection"])
async def test_renaming_a_sample_with_hidden_characters_is_refused_and_changes_nothing(http, accounts, field):
    alice, _ = accounts
    sample = await created(await upload_form(http, alice, HELLO, "Ada", transcript="Hello world.", collection="Talks"))
    for name in HIDDEN:
        response = await http.patch(f"/v1/voice/samples/{sample['id']}", json={field: name}, headers=alice.headers)
        await assert_error(response, 400, "invalid_parameter", field)
    now = await created(await http.get(f"/v1/voice/samples/{sample['id']}", headers=alice.headers))
    assert (now["speaker_name"], now["collection"]) == ("Ada", "Talks")


async def test_a_generation_in_a_collection_with_hidden_characters_is_refused_and_not_recorded(http, accounts):
    alice, _ = accounts
    before = await history_ids(http, alice)
    for name in HIDDEN:
        body = {"input": "[S1] Hello.", "max_new_tokens": 256, "collection": name}
        response = await http.post("/v1/voice/generations", json=body, headers=alice.headers)
        await assert_error(response, 400, "invalid_parameter", "collection")
        assert "X-Generation-Id" not in response.headers
        listing = await http.get("/v1/voice/generations", params={"collection": name}, headers=alice.headers)
        await assert_error(listing, 400, "invalid_parameter", "collection")
    assert await history_ids(http, alice) == before


async def test_moving_a_generation_to_a_collection_with_hidden_characters_is_refused(http, accounts):
    alice, _ = accounts
    response = await http.post(
        "/v1/voice/generations", json={"input": "[S1] Hello.", "max_new_tokens": 256, "collection": "Talks"}, headers=alice.headers
    )
    assert response.status == 200, await response.text()
    generation_id = response.headers["X-Generation-Id"]
    for name in HIDDEN:
        response = await http.patch(f"/v1/voice/generations/{generation_id}", json={"collection": name}, headers=alice.headers)
        await assert_error(response, 400, "invalid_parameter", "collection")
    stored = await created(await http.get(f"/v1/voice/generations/{generation_id}", headers=alice.headers))
    assert stored["collection"] == "Talks"


async def test_a_file_named_with_hidden_characters_is_refused_and_not_stored(http, accounts):
    alice, _ = accounts

    async def files() -> set[str]:
        return {f["id"] for f in (await created(await http.get("/v1/files", headers=alice.headers)))["results"]}

    before = await files()
    for name in HIDDEN:
        form = aiohttp.FormData()
        form.add_field("content", b"RIFF", filename="a.wav", content_type="audio/wav")
        form.add_field("filename", name)
        await assert_error(await http.post("/v1/files", data=form, headers=alice.headers), 400, "invalid_parameter", "filename")
    assert await files() == before
    form = aiohttp.FormData()
    form.add_field("content", b"RIFF", filename="a.wav", content_type="audio/wav")
    form.add_field("filename", "Ada – take 2.wav")
    assert (await created(await http.post("/v1/files", data=form, headers=alice.headers)))["name"] == "Ada – take 2.wav"


async def test_the_document_publishes_the_rule_of_names(http):
    document = await (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    spec = schemas["voice.gateway.v1.GenerationSpec"]["properties"]["collection"]
    assert spec["pattern"].startswith("^[^\\u0000-\\u001f") and "\\u200b-\\u200f" in spec["pattern"]
    assert "zero-width" in spec["description"]
    upload = document["paths"]["/v1/voice/samples"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    for field in ("speaker_name", "collection"):
        assert upload["properties"][field]["pattern"] == spec["pattern"]
    assert "pattern" not in schemas["voice.gateway.v1.GenerationSpec"]["properties"]["input"]
