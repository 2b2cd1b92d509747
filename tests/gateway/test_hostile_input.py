"""What careless clients and attackers send, through the real mesh: every answer
is a typed error in the documented shape with a 4xx status, never a 500, a
traceback or text/plain; nothing reveals the software behind it; and what is
refused is not stored."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import uuid
import zlib

import aiohttp
import asyncpg
import pytest
from yarl import URL

from tests.conftest import ROOT
from tests.gateway.conftest import (
    HELLO,
    Account,
    assert_error,
    created,
    extra_gateway,
    make_key,
)

ERROR_KEYS = {"type", "message", "param"}


async def assert_typed_4xx(response: aiohttp.ClientResponse) -> dict:
    """A 4xx with the documented error body, whatever the type."""
    text = await response.text()
    assert 400 <= response.status < 500, (response.status, text)
    assert response.content_type == "application/json", (response.content_type, text)
    body = json.loads(text)
    assert set(body["error"]) <= ERROR_KEYS and body["error"]["type"] and body["error"]["message"], body
    assert "Traceback" not in text
    return body["error"]


async def operations(http) -> list[tuple[str, str]]:
    """(method, path) of every operation /openapi.json lists, its path variables filled in;
    not one documented as 501 whatever it is sent (none today: streams are reached through
    their unary routes)."""
    document = await (await http.get("/openapi.json")).json()
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, item in document["paths"].items()
        for method in item
        if "501" not in item[method]["responses"]
    ]


async def operators_own_operations(http) -> set[tuple[str, str]]:
    """(method, path), as operations() gives them, of the operations only an operator's key may call."""
    document = await (await http.get("/openapi.json")).json()
    return {
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, item in document["paths"].items()
        for method in item
        if item[method].get("x-scope") == "admin"
    }


@pytest.fixture(scope="module")
def operator(key_env) -> Account:
    name = f"ops-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env, scopes="admin"))


async def history_ids(http, account) -> set[str]:
    listing = await (await http.get("/v1/voice/generations", params={"page_size": "100"}, headers=account.headers)).json()
    return {generation["id"] for generation in listing["generations"]}


# --- malformed multipart ---------------------------------------------------------

MALFORMED_FORMS = {
    "no boundary": ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="speaker_name"\r\n\r\nAda\r\n--x--\r\n'),
    "a control character in a part name": (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="speaker\x01name"\r\n\r\nAda\r\n--x--\r\n',
    ),
    "no closing boundary": (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="speaker_name"\r\n\r\nAda\r\n',
    ),
    "a part without a name": ("multipart/form-data; boundary=x", b"--x\r\n\r\nAda\r\n--x--\r\n"),
    "an unknown charset": (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="speaker_name"\r\nContent-Type: text/plain; charset=nope\r\n\r\nAda\r\n--x--\r\n',
    ),
}


# The routes that take a multipart form (an upload): a malformed one is invalid_request there.
UPLOADS = {("POST", "/v1/voice/samples"), ("POST", "/v1/files")}


@pytest.mark.parametrize("problem", MALFORMED_FORMS)
async def test_a_malformed_form_is_a_typed_error_on_every_route(http, accounts, operator, problem):
    alice, _ = accounts
    content_type, body = MALFORMED_FORMS[problem]
    operators_own = await operators_own_operations(http)
    for method, path in await operations(http):
        # Every route that takes a body is called by a key that may call it (an operator's for theirs, which
        # the malformed body stops before anything is done), so that the body is what it answers.
        caller = operator if (method, path) in operators_own and method in ("POST", "PATCH") else alice
        response = await http.request(method, path, data=body, headers={**caller.headers, "Content-Type": content_type})
        if response.status < 400:
            continue  # a route without a body ignores it
        error = await assert_typed_4xx(response)
        if (method, path) in UPLOADS:
            assert (response.status, error["type"]) == (400, "invalid_request"), (problem, error)
        elif method in ("POST", "PATCH"):
            assert (response.status, error["type"]) == (415, "unsupported_media_type"), (method, path, error)


async def test_a_form_text_field_that_is_not_utf8_is_400(http, accounts):
    alice, _ = accounts
    body = (
        b'--x\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n'
        b'--x\r\nContent-Disposition: form-data; name="speaker_name"\r\n\r\n\xff\xfeAda\r\n--x--\r\n'
    )
    headers = {**alice.headers, "Content-Type": "multipart/form-data; boundary=x"}
    error = await assert_error(await http.post("/v1/voice/samples", data=body, headers=headers), 400, "invalid_request")
    assert "UTF-8" in error["message"]


async def sample_ids(http, account) -> list[int]:
    listing = await (await http.get("/v1/voice/samples", params={"page_size": "100"}, headers=account.headers)).json()
    return [sample["id"] for sample in listing["voice_samples"]]


@pytest.mark.parametrize("with_audio", [True, False])
async def test_a_form_field_sent_as_a_file_part_is_refused_naming_it(http, accounts, with_audio):
    alice, _ = accounts
    before = await sample_ids(http, alice)
    form = aiohttp.FormData()
    if with_audio:
        form.add_field("audio", HELLO, filename="a.webm", content_type="audio/webm")
    form.add_field("speaker_name", b"Ada", filename="name.txt", content_type="text/plain")
    error = await assert_error(await http.post("/v1/voice/samples", data=form, headers=alice.headers), 400, "invalid_parameter", "speaker_name")
    assert "text field" in error["message"]
    assert await sample_ids(http, alice) == before
    # The same for the metadata of /v1/files.
    files = await file_ids(http, alice)
    form = aiohttp.FormData()
    form.add_field("content", b"RIFF", filename="a.wav", content_type="audio/wav")
    form.add_field("metadata", b'{"k": 1}', filename="metadata.json", content_type="application/json")
    await assert_error(await http.post("/v1/files", data=form, headers=alice.headers), 400, "invalid_parameter", "metadata")
    assert await file_ids(http, alice) == files


async def test_the_file_part_may_have_another_name_when_it_is_the_only_one(http, accounts):
    alice, _ = accounts
    form = aiohttp.FormData()
    form.add_field("file", b"RIFF", filename="a.wav", content_type="audio/wav")  # not "content"
    stored = await created(await http.post("/v1/files", data=form, headers=alice.headers))
    assert stored["size"] == 4


# --- NUL characters: PostgreSQL's text cannot hold them ----------------------------


@pytest.mark.parametrize("field", ["speaker_name", "transcript", "collection"])
async def test_a_nul_in_a_sample_field_is_refused_naming_it(http, accounts, field):
    alice, _ = accounts
    fields = {"speaker_name": "Ada", field: "A\x00da"}
    form = aiohttp.FormData()
    form.add_field("audio", b"not audio", filename="a.webm", content_type="audio/webm")
    for name, value in fields.items():
        form.add_field(name, value)
    response = await http.post("/v1/voice/samples", data=form, headers=alice.headers)
    error = await assert_error(response, 400, "invalid_parameter", field)
    assert "NUL" in error["message"]
    # The same as query parameters of a raw upload, and in a PATCH.
    headers = {**alice.headers, "Content-Type": "audio/webm"}
    response = await http.post("/v1/voice/samples", data=b"not audio", params=fields, headers=headers)
    await assert_error(response, 400, "invalid_parameter", field)
    response = await http.patch("/v1/voice/samples/1", json={field: "A\x00da"}, headers=alice.headers)
    await assert_error(response, 400, "invalid_parameter", field)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "[S1] Hello\x00 there."}, "input"),
        ({"input": "[S1] Hello.", "model": "dia\x00"}, "model"),
        ({"input": "[S1] Hello.", "collection": "talks\x00"}, "collection"),
        ({"input": "[S1] Hello.", "speakers": {"S1\x00": 1}}, "speakers"),
    ],
)
async def test_a_nul_in_a_generation_is_refused_and_not_recorded(http, accounts, body, param):
    alice, _ = accounts
    before = await history_ids(http, alice)
    response = await http.post("/v1/voice/generations", json=body, headers=alice.headers)
    await assert_error(response, 400, "invalid_parameter", param)
    assert "X-Generation-Id" not in response.headers
    assert await history_ids(http, alice) == before


@pytest.mark.parametrize("field", ["input", "model", "voice"])
async def test_a_nul_in_a_speech_request_is_refused_and_not_recorded(http, accounts, field):
    alice, _ = accounts
    before = await history_ids(http, alice)
    body = {"input": "Hello.", "voice": "", field: "x\x00y"}
    await assert_error(await http.post("/v1/audio/speech", json=body, headers=alice.headers), 400, "invalid_parameter", field)
    assert await history_ids(http, alice) == before


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/voice/generations/gen_%00", "id"),
        ("/v1/voice/generations/gen_%00/audio", "id"),
        ("/v1/shared/generations/abc%00/audio", "share_token"),
    ],
)
async def test_a_nul_in_an_id_is_refused_naming_it(http, accounts, path, param):
    alice, _ = accounts
    response = await http.get(URL(path, encoded=True), headers=alice.headers)
    await assert_error(response, 400, "invalid_parameter", param)


# --- JSON bodies ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [990, 100_000])
async def test_json_nested_too_deeply_is_invalid_json(http, accounts, depth):
    alice, _ = accounts
    body = '{"input": ' + "[" * depth + "]" * depth + "}"
    response = await http.post(
        "/v1/voice/generations", data=body, headers={**alice.headers, "Content-Type": "application/json"}
    )
    error = await assert_error(response, 400, "invalid_json")
    assert "nested" in error["message"]


# Every JSON route: a lone UTF-16 surrogate escape as a key is no Unicode text, and no field's name.
JSON_ROUTES = [
    ("POST", "/v1/voice/generations"),
    ("POST", "/v1/predictions"),
    ("POST", "/v1/audio/speech"),
    ("PATCH", "/v1/voice/generations/1"),
    ("PATCH", "/v1/voice/samples/1"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "error_type", "param"),
    [(method, path, b'{"\\ud800": 1}', "invalid_json", None) for method, path in JSON_ROUTES]
    + [
        ("POST", "/v1/predictions", b'{"version": "nari-labs/dia", "input": {"text": "[S1] Hi.", "\\udfff": 1}}', "invalid_json", None),
        # A string where an object belongs: protobuf's parser would look its characters up as field names.
        ("POST", "/v1/predictions", b'{"version": "nari-labs/dia", "input": "\\ud800"}', "invalid_parameter", "input"),
        ("POST", "/v1/voice/generations", b'{"input": "[S1] Hi.", "speakers": {"S1": ["\\udbff"]}}', "invalid_parameter", "speakers.S1"),
    ],
)
async def test_a_lone_surrogate_in_json_is_a_typed_400(http, accounts, method, path, body, error_type, param):
    alice, _ = accounts
    before = await history_ids(http, alice)
    response = await http.request(method, path, data=body, headers={**alice.headers, "Content-Type": "application/json"})
    error = await assert_error(response, 400, error_type, param)
    assert "surrogate" in error["message"]
    assert await history_ids(http, alice) == before


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"input": "[S1] Hello."}'),
        ("application/xml", b"<input>[S1] Hello.</input>"),
        ("application/x-www-form-urlencoded", b"input=%5BS1%5D+Hello."),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="input"\r\n\r\nHi\r\n--x--\r\n'),
    ],
)
@pytest.mark.parametrize("method, path", [("POST", "/v1/voice/generations"), ("POST", "/v1/audio/speech"), ("PATCH", "/v1/voice/samples/1")])
async def test_a_json_endpoint_refuses_other_media_types_with_415(http, accounts, content_type, body, method, path):
    alice, _ = accounts
    before = await history_ids(http, alice)
    response = await http.request(method, path, data=body, headers={**alice.headers, "Content-Type": content_type})
    error = await assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert await history_ids(http, alice) == before


@pytest.mark.parametrize("content_type", [None, "application/json; charset=utf-8", "application/merge-patch+json"])
async def test_json_with_or_without_a_json_content_type_is_read(http, accounts, content_type):
    alice, _ = accounts
    headers = dict(alice.headers, **({"Content-Type": content_type} if content_type else {}))
    # Read as JSON: its unknown field is named (an unread body would not get that far).
    response = await http.patch(
        "/v1/voice/samples/1", data=b'{"colour": "red"}', headers=headers, skip_auto_headers=["Content-Type"]
    )
    await assert_error(response, 400, "invalid_parameter", "colour")


# --- /v1/files metadata: free-form JSON that PostgreSQL and protobuf must both hold ------------


def nested(depth: int, kind: str = "object") -> str:
    """JSON `depth` levels deep: {"a": {"a": ... 1}} or [[... 1]] (a flat object is 1)."""
    opening, closing = ('{"a": ', "}") if kind == "object" else ("[", "]")
    return opening * depth + "1" + closing * depth


async def upload_file(http, account, metadata: str | None = None) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("content", b"RIFF", filename="a.wav", content_type="audio/wav")
    if metadata is not None:
        form.add_field("metadata", metadata)
    return await http.post("/v1/files", data=form, headers=account.headers)


async def file_ids(http, account) -> list[str]:
    response = await http.get("/v1/files", headers=account.headers)
    body = await response.json()
    assert response.status == 200, body
    return [found["id"] for found in body["results"]]


HOSTILE_METADATA = {
    "NaN": '{"a": NaN}',
    "Infinity": '{"a": Infinity}',
    "-Infinity": '{"a": -Infinity}',
    "1e400": '{"a": 1e400}',
    "-1e400": '{"a": [-1e400]}',
    "an integer no double holds": '{"a": 1' + "0" * 400 + "}",
    "a lone surrogate as a key": '{"\\ud800": 1}',
    "a lone surrogate as a value": '{"a": ["\\udfff"]}',
    "NUL in a value": '{"a": "x\\u0000y"}',
    "NUL in a key": '{"b": {"x\\u0000": 1}}',
    "100,000 levels of lists": "[" * 100_000 + "]" * 100_000,
    "100,000 levels of objects": nested(100_000),
    "150 levels of objects": nested(150),
    "a list": "[1]",
    "not JSON": "{a: 1}",
}


@pytest.mark.parametrize("problem", HOSTILE_METADATA)
async def test_file_metadata_that_cannot_be_stored_or_read_back_is_refused(http, accounts, mesh, problem):
    alice, _ = accounts
    before = await file_ids(http, alice)
    mark = len(mesh.log_lines["gateway"])
    error = await assert_error(await upload_file(http, alice, HOSTILE_METADATA[problem]), 400, "invalid_parameter", "metadata")
    assert "Traceback" not in error["message"]
    assert await file_ids(http, alice) == before  # nothing stored, and the listing still answers
    assert not any("Traceback" in line for line in mesh.log_lines["gateway"][mark:])


async def test_file_metadata_of_the_default_depth_is_kept_and_one_level_more_refused(http, accounts):
    """GATEWAY_MAX_METADATA_DEPTH (32, the most a protobuf Struct can carry back in a File) is stored
    and read back, in the listing too; 33 levels are refused before anything is stored."""
    alice, _ = accounts
    for kind in ("object", "list"):
        deepest = '{"deep": ' + nested(31, kind) + "}"
        stored = await created(await upload_file(http, alice, deepest))
        assert stored["metadata"] == json.loads(deepest)
        assert (await created(await http.get(f"/v1/files/{stored['id']}", headers=alice.headers)))["metadata"] == json.loads(deepest)
        assert stored["id"] in await file_ids(http, alice)
        before = await file_ids(http, alice)
        response = await upload_file(http, alice, '{"deep": ' + nested(32, kind) + "}")
        error = await assert_error(response, 400, "invalid_parameter", "metadata")
        assert "32" in error["message"]
        assert await file_ids(http, alice) == before


async def test_metadata_stored_before_the_check_no_longer_breaks_the_listing(http, mesh, database, key_env):
    """Rows that older gateways stored (too deep, or a number no double holds) made every GET /v1/files
    of their account fail; migration 008 blanks their metadata, the files stay listed."""
    owner = Account(f"files-{uuid.uuid4().hex[:8]}", "")
    owner.key = make_key(owner.name, key_env)
    fine = await created(await upload_file(http, owner, '{"purpose": "test"}'))
    poisoned = {
        (await created(await upload_file(http, owner)))["id"]: nested(150),
        (await created(await upload_file(http, owner)))["id"]: '{"a": 1' + "0" * 400 + "}",
    }
    connection = await asyncpg.connect(database.url)
    try:
        for file_id, metadata in poisoned.items():  # as an unchecked gateway stored them
            await connection.execute("UPDATE gateway.prediction_files SET metadata = $2::jsonb WHERE id = $1", file_id, metadata)
        assert (await http.get("/v1/files", headers=owner.headers)).status == 500  # what the migration repairs
        migration = ROOT / "services" / "gateway" / "migrations" / "008_file_metadata_readable.sql"
        await connection.execute("SET search_path TO gateway")
        await connection.execute(migration.read_text())
    finally:
        await connection.close()
    listing = await created(await http.get("/v1/files", headers=owner.headers))
    metadata = {found["id"]: found["metadata"] for found in listing["results"]}
    assert metadata == {fine["id"]: {"purpose": "test"}, **{file_id: {} for file_id in poisoned}}


# --- Content-Encoding: gzip and deflate bodies are read decompressed, others refused ---------

FILE_FORM = (
    b'--x\r\nContent-Disposition: form-data; name="content"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    b"RIFF and some bytes\r\n--x\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{\"k\": 1}\r\n--x--\r\n"
)
FORM_TYPE = "multipart/form-data; boundary=x"


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/v1/files", FORM_TYPE, FILE_FORM),
        ("/v1/voice/samples", FORM_TYPE, b'--x\r\nContent-Disposition: form-data; name="speaker_name"\r\n\r\nAda\r\n--x--\r\n'),
        ("/v1/voice/generations", "application/json", b'{"input": "[S1] Hello."}'),
    ],
)
async def test_a_body_that_is_not_in_its_content_encoding_is_invalid_request(
    http, accounts, mesh, coding, path, content_type, body
):
    alice, _ = accounts
    files, generations = await file_ids(http, alice), await history_ids(http, alice)
    headers = {**alice.headers, "Content-Type": content_type, "Content-Encoding": coding}
    mark = len(mesh.log_lines["gateway"])
    error = await assert_error(await http.post(path, data=body, headers=headers), 400, "invalid_request")
    assert coding in error["message"]
    assert (await file_ids(http, alice), await history_ids(http, alice)) == (files, generations)
    assert not any("Traceback" in line for line in mesh.log_lines["gateway"][mark:])


@pytest.mark.parametrize("coding", ["gzip", "deflate", "GZip"])
async def test_a_compressed_upload_is_read_decompressed(http, accounts, coding):
    alice, _ = accounts
    body = gzip.compress(FILE_FORM) if coding.lower() == "gzip" else zlib.compress(FILE_FORM)
    headers = {**alice.headers, "Content-Type": FORM_TYPE, "Content-Encoding": coding}
    stored = await created(await http.post("/v1/files", data=body, headers=headers))
    assert stored["metadata"] == {"k": 1}
    content = await http.get(f"/v1/files/{stored['id']}/content", headers=alice.headers)
    assert await content.read() == b"RIFF and some bytes"
    # JSON too: read decompressed, so its field is named.
    headers = {**alice.headers, "Content-Type": "application/json", "Content-Encoding": coding}
    body = b'{"input": 5}'
    compressed = gzip.compress(body) if coding.lower() == "gzip" else zlib.compress(body)
    await assert_error(await http.post("/v1/voice/generations", data=compressed, headers=headers), 400, "invalid_parameter", "input")


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip", "bogus"])
async def test_a_content_encoding_the_api_does_not_decode_is_415(http, accounts, coding):
    alice, _ = accounts
    before = await file_ids(http, alice)
    headers = {**alice.headers, "Content-Type": FORM_TYPE, "Content-Encoding": coding}
    error = await assert_error(await http.post("/v1/files", data=FILE_FORM, headers=headers), 415, "unsupported_media_type")
    assert "gzip" in error["message"] and "Please install" not in error["message"]
    assert await file_ids(http, alice) == before


# --- what aiohttp answers by itself ----------------------------------------------


async def raw_request(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (a client library would refuse to); the status, headers and body."""
    address = URL(url)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()  # the server closes after a refusal
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/voice/samples?page_token=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n",
        b"G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
    ],
    ids=["URL over the limit", "header over the limit", "control character in the method", "NUL in a header"],
)
async def test_a_request_aiohttp_cannot_parse_gets_the_error_shape(mesh, request_bytes):
    status, headers, body = await raw_request(mesh.http_url, request_bytes)
    assert status == 400 and headers["content-type"].startswith("application/json"), (status, headers, body)
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request" and set(error) <= ERROR_KEYS, error
    assert "server" not in headers


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/v1/voice/generations", "application/json"), ("/v1/files", FORM_TYPE), ("/v1/voice/samples?speaker_name=A", "audio/wav")],
)
async def test_a_body_cut_short_by_the_client_logs_one_info_line(mesh, accounts, path, content_type):
    """A client that announces 100 bytes, sends 10 and goes away is nobody's error: one line, no traceback."""
    alice, _ = accounts
    mark = len(mesh.log_lines["gateway"])
    address = URL(mesh.http_url)
    for _ in range(3):
        _, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + alice.headers["Authorization"].encode()
            + b"\r\nContent-Type: " + content_type.encode() + b"\r\nContent-Length: 100\r\n\r\n" + b"0123456789"
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    def lines() -> list[dict]:
        return [json.loads(line) for line in mesh.log_lines["gateway"][mark:] if line.startswith("{")]

    route = path.partition("?")[0]
    for _ in range(100):  # until the gateway has seen the three go
        if sum(line.get("path") == route for line in lines()) >= 3:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # whatever else it would log about them
    seen = [line for line in lines() if line.get("path") == route or line["level"] != "info"]
    assert [(line["level"], line.get("status")) for line in seen] == [("info", 499)] * 3, seen
    assert not any("Traceback" in line or "exception" in line for line in mesh.log_lines["gateway"][mark:])


async def test_every_answer_tells_browsers_not_to_sniff_its_type(http, accounts, mesh):
    alice, _ = accounts
    form = aiohttp.FormData()
    form.add_field("content", b"<html><script>alert(1)</script>", filename="a.html", content_type="text/html")
    stored = await created(await http.post("/v1/files", data=form, headers=alice.headers))
    for response in [
        await http.get("/v1/voice/samples", headers=alice.headers),
        await http.get(f"/v1/files/{stored['id']}/content", headers=alice.headers),  # what a user uploaded
        await http.get("/v1/voice/nothing", headers=alice.headers),  # 404
        await http.get("/v1/voice/samples"),  # 401
        await http.get("/healthz"),
        await http.get("/openapi.json"),
        await http.get("/"),
    ]:
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (response.url, response.status)
    # Also what the HTTP server answers before any route (a malformed request).
    status, headers, _ = await raw_request(mesh.http_url, b"G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers.get("x-content-type-options")) == (400, "nosniff")


async def test_no_response_names_the_server_software(http, accounts, mesh):
    alice, _ = accounts
    for response in [
        await http.get("/healthz"),
        await http.get("/openapi.json"),
        await http.get("/v1/voice/samples", headers=alice.headers),
        await http.get("/v1/voice/nothing", headers=alice.headers),
        await http.get("/v1/voice/samples"),  # 401
    ]:
        assert "Server" not in response.headers, (response.url, response.headers["Server"])
    # Nor do the services' metrics ports.
    for name in ("gateway", "library", "synth"):
        port = mesh.env[f"{name.upper()}_METRICS_PORT"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200 and "Server" not in response.headers, (name, response.headers)


# --- limits of the edge, at their edges, and metrics off the public port -----------

URL_LIMIT = HEADER_LIMIT = 1000
JSON_DEPTH = 3
METADATA_DEPTH = 2
BODY_LIMIT = 100_000


@pytest.fixture(scope="module")
async def strict_gateway(mesh):
    settings = {
        "GATEWAY_MAX_URL_BYTES": str(URL_LIMIT),
        "GATEWAY_MAX_HEADER_BYTES": str(HEADER_LIMIT),
        "GATEWAY_MAX_JSON_DEPTH": str(JSON_DEPTH),
        "GATEWAY_MAX_METADATA_DEPTH": str(METADATA_DEPTH),
        "GATEWAY_MAX_BODY_BYTES": str(BODY_LIMIT),
        "GATEWAY_PUBLIC_METRICS": "false",
    }
    async with extra_gateway(mesh, **settings) as gateway:
        yield gateway


def url_of_length(length: int) -> bytes:
    head = b"/v1/voice/samples?page_token="
    return head + b"a" * (length - len(head))


async def test_a_url_of_the_limit_is_served_and_one_byte_more_refused(strict_gateway, accounts):
    alice, _ = accounts
    key = alice.headers["Authorization"].encode()
    for length, expected in [(URL_LIMIT, "invalid_parameter"), (URL_LIMIT + 1, "invalid_request")]:
        request = b"GET " + url_of_length(length) + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + key + b"\r\n\r\n"
        status, _, body = await raw_request(strict_gateway.http_url, request)
        assert (status, json.loads(body)["error"]["type"]) == (400, expected), (length, body)


async def test_a_header_value_of_the_limit_is_taken_and_one_byte_more_refused(strict_gateway):
    for size, expected in [(HEADER_LIMIT, 200), (HEADER_LIMIT + 1, 400)]:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: " + b"a" * size + b"\r\n\r\n"
        status, _, body = await raw_request(strict_gateway.http_url, request)
        assert status == expected, (size, body)


async def test_json_of_the_depth_limit_is_read_and_one_level_more_refused(strict_gateway, accounts):
    alice, _ = accounts
    headers = {**alice.headers, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(base_url=strict_gateway.http_url) as http:
        # Three levels: read, and its wrong type named.
        response = await http.post("/v1/voice/generations", data=b'{"speakers": {"S1": [1]}}', headers=headers)
        await assert_error(response, 400, "invalid_parameter", "speakers")
        response = await http.post("/v1/voice/generations", data=b'{"speakers": {"S1": [[1]]}}', headers=headers)
        error = await assert_error(response, 400, "invalid_json")
        assert str(JSON_DEPTH) in error["message"]


async def test_file_metadata_of_the_depth_limit_is_kept_and_one_level_more_refused(strict_gateway, accounts):
    alice, _ = accounts
    async with aiohttp.ClientSession(base_url=strict_gateway.http_url) as http:
        for kind in ("object", "list"):
            at_limit = '{"a": ' + nested(METADATA_DEPTH - 1, kind) + "}"
            assert (await created(await upload_file(http, alice, at_limit)))["metadata"] == json.loads(at_limit)
            before = await file_ids(http, alice)
            response = await upload_file(http, alice, '{"a": ' + nested(METADATA_DEPTH, kind) + "}")
            error = await assert_error(response, 400, "invalid_parameter", "metadata")
            assert f"more than {METADATA_DEPTH} levels" in error["message"]
            assert await file_ids(http, alice) == before


async def test_a_compressed_body_is_held_to_the_body_limit_once_decompressed(strict_gateway, accounts):
    alice, _ = accounts
    async with aiohttp.ClientSession(base_url=strict_gateway.http_url) as http:
        before = await file_ids(http, alice)
        for path, content_type, body in [
            ("/v1/files", FORM_TYPE, FILE_FORM.replace(b"RIFF and some bytes", b"\0" * BODY_LIMIT)),
            ("/v1/voice/generations", "application/json", b'{"input": "' + b" " * BODY_LIMIT + b'"}'),
        ]:
            compressed = gzip.compress(body)
            assert len(compressed) < BODY_LIMIT // 100
            headers = {**alice.headers, "Content-Type": content_type, "Content-Encoding": "gzip"}
            await assert_error(await http.post(path, data=compressed, headers=headers), 413, "request_too_large")
        assert await file_ids(http, alice) == before


async def test_metrics_can_be_kept_off_the_public_port(strict_gateway, http):
    async with aiohttp.ClientSession() as session:
        await assert_error(await session.get(f"{strict_gateway.http_url}/metrics"), 404, "not_found")
        port = strict_gateway.env["GATEWAY_METRICS_PORT"]
        text = await (await session.get(f"http://127.0.0.1:{port}/metrics")).text()
        assert "http_requests_total" in text  # the edge's own metrics, on the metrics port
    assert (await http.get("/metrics")).status == 200  # the default: public, as before


async def test_a_key_that_is_not_utf8_is_just_a_wrong_key(mesh):
    request = b"GET /v1/voice/samples HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    status, headers, body = await raw_request(mesh.http_url, request)
    assert (status, json.loads(body)["error"]["type"]) == (401, "unauthorized"), body


async def test_a_content_type_that_is_not_utf8_is_a_typed_error(mesh, accounts):
    alice, _ = accounts
    key = alice.headers["Authorization"].encode()
    for path in (b"/v1/voice/samples?speaker_name=Ada", b"/v1/voice/generations"):
        request = (
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + key
            + b"\r\nContent-Type: audio/\xff\xfe\r\nContent-Length: 4\r\n\r\nRIFF"
        )
        status, _, body = await raw_request(mesh.http_url, request)
        assert 400 <= status < 500 and json.loads(body)["error"]["type"], (path, status, body)
    # The same in the headers of a form's parts.
    for part_headers in (
        b'Content-Disposition: form-data; name="audio"; filename="a"\r\nContent-Type: audio/\xff',
        b'Content-Disposition: form-data; name="speaker_\xff"',
    ):
        form = b"--x\r\n" + part_headers + b"\r\n\r\nRIFF\r\n--x--\r\n"
        request = (
            b"POST /v1/voice/samples HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + key
            + b"\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: " + str(len(form)).encode()
            + b"\r\n\r\n" + form
        )
        status, _, body = await raw_request(mesh.http_url, request)
        assert 400 <= status < 500 and json.loads(body)["error"]["type"], (part_headers, status, body)


# --- slow clients: read timeouts of the edge, at their edges -------------------------

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 3
KEEPALIVE_TIMEOUT = 2
# How long a test waits for the gateway to cut a slow client off: far past the timeouts, so a busy
# machine cannot fail it; a gateway that never cuts it off fails it.
CUT_OFF_WITHIN = 60


@pytest.fixture(scope="module")
async def timeouts_gateway(mesh):
    settings = {
        "GATEWAY_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "GATEWAY_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "GATEWAY_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE_TIMEOUT),
    }
    async with extra_gateway(mesh, **settings) as gateway:
        yield gateway


async def send_slowly(url: str, pieces: list[bytes], pause: float) -> bytes:
    """Send the pieces with a pause after each (stopping once the server has answered and closed),
    and return what came back until the server closed the connection."""
    address = URL(url)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    received: list[bytes] = []

    async def read_all() -> None:
        try:
            while chunk := await reader.read(65536):
                received.append(chunk)
        except ConnectionError:
            pass  # what came before the reset is kept

    reading = asyncio.ensure_future(read_all())
    try:
        for piece in pieces:
            if reading.done():
                break
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(pause)
        await asyncio.wait_for(reading, CUT_OFF_WITHIN)
        return b"".join(received)
    finally:
        reading.cancel()
        writer.close()


def answer_of(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def test_request_headers_slower_than_the_timeout_are_cut_off_with_408(timeouts_gateway):
    # The head never ends: the gateway answers 408 and closes (reader.read() returns).
    status, headers, body = answer_of(await send_slowly(timeouts_gateway.http_url, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], 0))
    assert (status, json.loads(body)["error"]["type"]) == (408, "request_timeout"), body
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    # One byte at a time, each well within the timeout, is still too slow in all.
    pieces = [bytes([byte]) for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n"]
    status, _, body = answer_of(await send_slowly(timeouts_gateway.http_url, pieces, HEADER_TIMEOUT / 8))
    assert status == 408, body


async def test_request_headers_within_the_timeout_are_served(timeouts_gateway):
    pieces = [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"]
    status, _, body = answer_of(await send_slowly(timeouts_gateway.http_url, pieces, HEADER_TIMEOUT / 10))
    assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(timeouts_gateway):
    # Nothing sent at all: closed without an answer.
    assert await send_slowly(timeouts_gateway.http_url, [], 0) == b""
    # Kept open after an answer, then closed once idle.
    raw = await send_slowly(timeouts_gateway.http_url, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], 0)
    status, headers, body = answer_of(raw)
    assert status == 200 and headers.get("connection") != "close" and body == b'{"status": "ok"}'


def upload_request(account, path: str, content_type: str, body: bytes) -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
        + account.headers["Authorization"].encode() + b"\r\nContent-Type: " + content_type.encode()
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )


BODIES = [
    ("/v1/files", FORM_TYPE, FILE_FORM),
    ("/v1/voice/generations", "application/json", b'{"input": "' + b" " * 200 + b'[S1] Hello.", "max_new_tokens": 0}'),
]


@pytest.mark.parametrize(("path", "content_type", "body"), BODIES)
async def test_a_body_slower_than_the_timeout_is_cut_off_with_408(timeouts_gateway, accounts, path, content_type, body):
    alice, _ = accounts
    async with aiohttp.ClientSession(base_url=timeouts_gateway.http_url) as http:
        files, generations = await file_ids(http, alice), await history_ids(http, alice)
        # Half the body, then nothing.
        pieces = [upload_request(alice, path, content_type, body), body[: len(body) // 2]]
        status, headers, answer = answer_of(await send_slowly(timeouts_gateway.http_url, pieces, 0))
        assert (status, json.loads(answer)["error"]["type"]) == (408, "request_timeout"), answer
        assert headers["connection"] == "close"
        # A trickle, each piece well within the timeout, is too slow in all.
        pieces = [upload_request(alice, path, content_type, body), *(body[i : i + 10] for i in range(0, len(body), 10))]
        assert len(pieces) * BODY_TIMEOUT / 8 > 2 * BODY_TIMEOUT
        status, _, answer = answer_of(await send_slowly(timeouts_gateway.http_url, pieces, BODY_TIMEOUT / 8))
        assert status == 408, answer
        assert (await file_ids(http, alice), await history_ids(http, alice)) == (files, generations)


async def test_a_slow_upload_within_the_body_timeout_is_served(timeouts_gateway, accounts):
    alice, _ = accounts
    path, content_type, body = BODIES[0]
    pieces = [upload_request(alice, path, content_type, body), *(body[i : i + 40] for i in range(0, len(body), 40))]
    assert len(pieces) * BODY_TIMEOUT / 20 < BODY_TIMEOUT / 2
    status, _, answer = answer_of(await send_slowly(timeouts_gateway.http_url, pieces, BODY_TIMEOUT / 20))
    assert status == 200 and json.loads(answer)["metadata"] == {"k": 1}, answer
