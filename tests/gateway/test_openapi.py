"""The OpenAPI document is made from the same routes and descriptors the front serves."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool

from services.gateway.edge import discovery, openapi
from voice.library.v1 import library_pb2

LIBRARY = library_pb2.DESCRIPTOR.services_by_name["LibraryService"].full_name


@pytest.fixture(scope="module")
def document(things_routes):
    return openapi.document(list(things_routes.values()))


def resolve(document, reference: str) -> dict:
    assert reference.startswith("#/components/schemas/")
    return document["components"]["schemas"][reference.rsplit("/", 1)[1]]


def refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_route_is_a_path_and_method(document, things_routes):
    assert document["openapi"].startswith("3.")
    for route in things_routes.values():
        assert route.http_method.lower() in document["paths"][route.template.openapi_path]
    assert set(document["paths"]["/v1/things/{id}"]) == {"get", "patch"}
    assert "/v1/{name}" in document["paths"]


def test_every_reference_resolves(document):
    for reference in refs(document):
        assert resolve(document, reference)


def test_path_and_query_parameters_are_typed(document):
    get_thing = document["paths"]["/v1/things/{id}"]["get"]
    assert get_thing["parameters"] == [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "format": "int64"}}
    ]
    listing = {p["name"]: p for p in document["paths"]["/v1/things"]["get"]["parameters"]}
    assert listing["page_size"]["schema"] == {"type": "integer", "format": "int32"}
    assert listing["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert listing["filter.active"]["schema"] == {"type": "boolean"}
    assert listing["filter.kind"]["schema"]["enum"] == ["KIND_UNSPECIFIED", "KIND_SMALL", "KIND_BIG"]
    assert listing["since"]["schema"] == {"type": "string", "format": "date-time"}
    assert all(p["in"] == "query" for p in listing.values())


def test_a_whole_body_leaves_out_the_path_fields_and_takes_no_query(document):
    update = document["paths"]["/v1/things/{id}"]["patch"]
    schema = update["requestBody"]["content"]["application/json"]["schema"]
    assert "id" not in schema["properties"] and "name" in schema["properties"]
    assert schema["properties"]["counts"] == {"type": "object", "additionalProperties": {"type": "integer", "format": "int64"}}
    assert [p["in"] for p in update["parameters"]] == ["path"]


def test_an_http_body_upload_takes_raw_bytes_or_a_multipart_form(document):
    upload = document["paths"]["/v1/things/{id}/file"]["post"]
    content = upload["requestBody"]["content"]
    assert content["*/*"]["schema"] == {"type": "string", "format": "binary"}
    form = content["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(form["properties"]) == {"file", "note", "is_default"}
    assert {p["name"] for p in upload["parameters"] if p["in"] == "query"} == {"note", "is_default"}


def test_responses_follow_response_body(document):
    thing = document["paths"]["/v1/things/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert thing == {"$ref": "#/components/schemas/test.things.v1.Thing"}
    schema = resolve(document, thing["$ref"])
    assert schema["properties"]["create_time"] == {"type": "string", "format": "date-time"}
    assert schema["properties"]["label"] == {"$ref": "#/components/schemas/test.things.v1.Label"}
    download = document["paths"]["/v1/things/{id}/file"]["get"]["responses"]["200"]["content"]
    assert download == {"*/*": {"schema": {"type": "string", "format": "binary"}}}


def test_a_binary_get_documents_its_byte_ranges_and_a_json_one_none(document):
    download = document["paths"]["/v1/things/{id}/file"]["get"]
    assert {"name": "Range", "in": "header"}.items() <= next(p for p in download["parameters"] if p["name"] == "Range").items()
    responses = download["responses"]
    assert responses["200"]["headers"]["Accept-Ranges"]["schema"] == {"type": "string", "enum": ["bytes"]}
    assert responses["206"]["content"] == responses["200"]["content"]
    assert responses["206"]["headers"]["Content-Range"]["required"] is True
    assert responses["416"]["headers"]["Content-Range"]["required"] is True
    assert responses["416"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    for path, method in (("/v1/things/{id}", "get"), ("/v1/things/{id}/file", "post")):
        operation = document["paths"][path][method]
        assert "Range" not in {p["name"] for p in operation["parameters"]}
        assert not {"206", "416"} & set(operation["responses"])


def test_errors_and_the_bearer_key_are_described(document):
    default = document["paths"]["/v1/things"]["get"]["responses"]["default"]
    error = resolve(document, default["content"]["application/json"]["schema"]["$ref"])
    assert set(error["properties"]["error"]["properties"]) == {"type", "message", "param"}
    assert document["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearerAuth": []}]


def test_the_answers_that_mean_not_now_document_retry_after(document):
    responses = document["paths"]["/v1/things"]["get"]["responses"]
    for status in ("429", "503"):
        assert responses[status]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    assert all("Retry-After" not in responses[status]["headers"] for status in ("400", "404", "500", "502"))


def library_document(published: dict[str, float]) -> dict:
    """/openapi.json of the real library's routes, as if the library had published `published`."""
    routes = discovery.routes_of("library", descriptor_pool.Default(), [LIBRARY], published)
    return openapi.document(routes)


def test_a_length_named_as_a_limit_is_the_value_its_upstream_published():
    published = {"speaker_name_chars": 37, "transcript_chars": 50, "collection_chars": 9}
    update = library_document(published)["paths"]["/v1/voice/samples/{id}"]["patch"]
    properties = update["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {name: properties[name]["maxLength"] for name in ("speaker_name", "transcript", "collection")} == {
        "speaker_name": 37, "transcript": 50, "collection": 9,
    }  # fmt: skip


def test_a_limit_its_upstream_did_not_publish_is_named_not_guessed():
    update = library_document({})["paths"]["/v1/voice/samples/{id}"]["patch"]
    speaker_name = update["requestBody"]["content"]["application/json"]["schema"]["properties"]["speaker_name"]
    assert "maxLength" not in speaker_name
    assert speaker_name["description"].endswith("At most as many characters as the service's limit speaker_name_chars allows.")


async def test_an_event_stream_answer_is_documented_event_by_event(http):
    """A text/event-stream answer's schema is that of one event (what OpenAPI 3.0 tools check each
    event against), with the method's comment saying which events come; other media types stay binary."""
    document = await (await http.get("/openapi.json")).json()
    streams = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for media_type, content in operation["responses"].get("200", {}).get("content", {}).items():
                if media_type == "text/event-stream":
                    streams[f"{method.upper()} {path}"] = content["schema"]
                elif media_type.startswith("audio/"):
                    assert content["schema"] == {"type": "string", "format": "binary"}
    assert set(streams) == {"GET /v1/predictions/{id}/stream", "POST /v1/audio/speech"}
    for schema in streams.values():
        assert schema["type"] == "object" and schema["required"] == ["data"]
        assert set(schema["properties"]) == {"event", "data", "id", "retry"}
        assert schema["properties"]["data"]["type"] == "string"
    described = streams["GET /v1/predictions/{id}/stream"]["description"]
    assert all(f'"{event}"' in described for event in ("logs", "output", "error", "done")), described
