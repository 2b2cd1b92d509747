"""HTTP ↔ gRPC transcoding on the made-up API of protos/things.proto: path,
query, body and multipart mapping, every bad input naming its field, and
responses shaped by response_body."""

from __future__ import annotations

import json

import grpc
import pytest

from runtime.errors import ApiError
from services.gateway.edge import errors
from services.gateway.edge.transcoding import FilePart, HttpInput, to_grpc_request, to_http_response


def request(routes, key: str, **http):
    return to_grpc_request(routes[key], HttpInput(**http))


def refused(routes, key: str, **http) -> ApiError:
    with pytest.raises(ApiError) as caught:
        request(routes, key, **http)
    return caught.value


# --- path ----------------------------------------------------------------


def test_path_variables_are_typed(things_routes):
    assert request(things_routes, "GET /v1/things/{id}", path_params={"id": "42"}).id == 42


@pytest.mark.parametrize("value", ["abc", "1.5", "99999999999999999999999", ""])
def test_a_path_value_of_the_wrong_type_names_the_variable(things_routes, value):
    error = refused(things_routes, "GET /v1/things/{id}", path_params={"id": value})
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "id")
    assert errors.http_status(error) == 400


def test_a_multi_segment_variable_fills_its_string_field(things_routes):
    made = request(things_routes, "GET /v1/{name=shelves/*/books/*}", path_params={"name": "shelves/1/books/2"})
    assert made.name == "shelves/1/books/2"


# --- query ------------------------------------------------------------------


def test_query_parameters_fill_unbound_fields_by_type(things_routes):
    made = request(
        things_routes,
        "GET /v1/things",
        params=[
            ("page_size", "10"),
            ("tags", "red"),
            ("tags", "blue"),
            ("filter.kind", "KIND_BIG"),
            ("filter.active", "true"),
            ("since", "2026-01-02T03:04:05Z"),
            ("cursor", "AQI="),
        ],
    )
    assert made.page_size == 10
    assert list(made.tags) == ["red", "blue"]
    assert made.filter.kind == 2 and made.filter.active is True
    assert made.since.seconds > 0
    assert made.cursor == b"\x01\x02"


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("1", True), ("0", False), ("on", True)])
def test_booleans_come_as_words(things_routes, text, value):
    assert request(things_routes, "GET /v1/things", params=[("filter.active", text)]).filter.active is value


@pytest.mark.parametrize(
    "name, value",
    [
        ("page_size", "ten"),
        ("page_size", "3000000000"),  # beyond int32
        ("filter.active", "maybe"),
        ("filter.kind", "KIND_HUGE"),
        ("since", "yesterday"),
    ],
)
def test_a_query_value_of_the_wrong_type_names_the_parameter(things_routes, name, value):
    error = refused(things_routes, "GET /v1/things", params=[(name, value)])
    assert (error.reason, error.param) == ("INVALID_PARAMETER", name)
    assert name in error.message


@pytest.mark.parametrize("name", ["colour", "filter.colour", "filter", "page_size.x"])
def test_unknown_query_parameters_are_refused_by_name(things_routes, name):
    error = refused(things_routes, "GET /v1/things", params=[(name, "1")])
    assert (error.reason, error.param) == ("INVALID_PARAMETER", name)
    assert "unknown" in error.message


def test_a_single_valued_parameter_given_twice_is_refused(things_routes):
    error = refused(things_routes, "GET /v1/things", params=[("page_size", "1"), ("page_size", "2")])
    assert error.param == "page_size"


def test_a_field_bound_by_the_path_cannot_come_as_a_query_parameter(things_routes):
    error = refused(things_routes, "GET /v1/things/{id}", path_params={"id": "1"}, params=[("id", "2")])
    assert error.param == "id"


# --- JSON body --------------------------------------------------------------


def test_body_star_fills_the_request_and_the_path_wins(things_routes):
    body = json.dumps({"id": 99, "name": "box", "is_default": False, "label": {"text": "hi", "size": 3}, "tags": ["a"], "counts": {"x": 5}})
    made = request(things_routes, "PATCH /v1/things/{id}", path_params={"id": "7"}, body=body.encode())
    assert made.id == 7
    assert made.name == "box" and made.HasField("is_default") and made.is_default is False
    assert (made.label.text, made.label.size, list(made.tags), dict(made.counts)) == ("hi", 3, ["a"], {"x": 5})


def test_additional_bindings_route_to_the_same_rpc(things_routes):
    made = request(things_routes, "POST /v1/things/{id}:update", path_params={"id": "7"}, body=b'{"name": "x"}')
    assert (made.id, made.name) == (7, "x")


def test_an_empty_body_is_an_empty_object(things_routes):
    made = request(things_routes, "PATCH /v1/things/{id}", path_params={"id": "7"}, body=b"")
    assert not made.HasField("name")


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"colour": "red"}, "colour", "unknown"),
        ({"is_default": "yes"}, "is_default", "invalid value"),
        ({"name": 5}, "name", "invalid value"),
        ({"label": {"text": "a", "colour": 1}}, "label.colour", "unknown"),
        ({"label": {"size": "big"}}, "label.size", "invalid value"),
        ({"label": "text"}, "label", "invalid value"),
        ({"tags": "a"}, "tags", "invalid value"),
        ({"counts": {"x": "many"}}, "counts", "invalid value"),
    ],
)
def test_bad_json_fields_are_named(things_routes, body, param, words):
    error = refused(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, body=json.dumps(body).encode())
    assert (error.reason, error.param) == ("INVALID_PARAMETER", param)
    assert words in error.message and param in error.message
    assert errors.http_status(error) == 400


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_invalid_json(things_routes, body):
    error = refused(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, body=body)
    assert error.reason == "INVALID_JSON" and errors.http_status(error) == 400


def test_query_parameters_are_refused_when_the_body_takes_every_field(things_routes):
    error = refused(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, params=[("name", "x")])
    assert error.param == "name"


def test_a_body_field_takes_the_json_and_the_rest_comes_from_the_query(things_routes):
    made = request(
        things_routes,
        "PUT /v1/things/{id}/label",
        path_params={"id": "3"},
        params=[("notify", "true")],
        body=b'{"text": "hello", "size": 2}',
    )
    assert (made.id, made.label.text, made.label.size, made.notify) == (3, "hello", 2, True)


def test_a_bad_field_inside_a_body_field_is_named_as_the_body_has_it(things_routes):
    # The JSON body is the label: its fields are named as the caller sent them.
    error = refused(things_routes, "PUT /v1/things/{id}/label", path_params={"id": "3"}, body=b'{"sise": 2}')
    assert error.param == "sise"
    nested = refused(things_routes, "PUT /v1/things/{id}/label", path_params={"id": "3"}, body=b'{"size": "big"}')
    assert nested.param == "size"


def test_multipart_to_a_json_endpoint_is_an_unsupported_media_type(things_routes):
    error = refused(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, multipart=True)
    assert (error.reason, errors.http_status(error)) == ("UNSUPPORTED_MEDIA_TYPE", 415)


@pytest.mark.parametrize("route", ["PATCH /v1/things/{id}", "PUT /v1/things/{id}/label"])
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_json_body_of_another_media_type_is_refused_unread(things_routes, route, content_type):
    body = b'{"name": "x"}' if route.startswith("PATCH") else b'{"text": "x"}'
    error = refused(things_routes, route, path_params={"id": "1"}, body=body, content_type=content_type)
    assert (error.reason, errors.http_status(error)) == ("UNSUPPORTED_MEDIA_TYPE", 415)
    assert content_type.split(";")[0] in error.message and "application/json" in error.message


@pytest.mark.parametrize("content_type", ["", "application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"])
def test_a_json_body_comes_as_json_or_without_a_media_type(things_routes, content_type):
    made = request(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, body=b'{"name": "x"}', content_type=content_type)
    assert made.name == "x"


def test_json_deeper_than_the_setting_is_invalid_json(things_routes, monkeypatch):
    monkeypatch.setenv("GATEWAY_MAX_JSON_DEPTH", "3")
    # Three levels: read (and refused by protobuf's rules: tags takes strings).
    error = refused(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, body=b'{"tags": [["a"]]}')
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "tags")
    error = refused(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, body=b'{"tags": [[["a"]]]}')
    assert error.reason == "INVALID_JSON" and "3 levels" in error.message
    # Deeper than Python's own parser can go: the same error, not a RecursionError.
    deep = b'{"tags": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refused(things_routes, "PATCH /v1/things/{id}", path_params={"id": "1"}, body=deep).reason == "INVALID_JSON"


# --- HttpBody uploads ------------------------------------------------------


def test_a_raw_body_fills_the_http_body_field_with_its_content_type(things_routes):
    made = request(
        things_routes,
        "POST /v1/things/{id}/file",
        path_params={"id": "5"},
        params=[("note", "hi"), ("is_default", "true")],
        body=b"\x00\x01binary",
        content_type="audio/webm;codecs=opus",
    )
    assert (made.file.data, made.file.content_type) == (b"\x00\x01binary", "audio/webm;codecs=opus")
    assert (made.id, made.note, made.is_default) == (5, "hi", True)


def test_a_raw_body_without_content_type_is_octet_stream(things_routes):
    made = request(things_routes, "POST /v1/things/{id}/file", path_params={"id": "5"}, body=b"x")
    assert made.file.content_type == "application/octet-stream"


def test_a_multipart_form_fills_the_http_body_from_its_file_and_fields_like_query(things_routes):
    made = request(
        things_routes,
        "POST /v1/things/{id}/file",
        path_params={"id": "5"},
        multipart=True,
        files=[FilePart("file", b"RIFF....", "audio/wav")],
        params=[("note", "from a form"), ("is_default", "on")],
    )
    assert (made.file.data, made.file.content_type) == (b"RIFF....", "audio/wav")
    assert (made.note, made.is_default) == ("from a form", True)


def test_a_form_with_one_file_under_another_name_still_uploads_it(things_routes):
    made = request(
        things_routes, "POST /v1/things/{id}/file", path_params={"id": "5"}, multipart=True,
        files=[FilePart("upload", b"data", "audio/ogg")],
    )
    assert made.file.data == b"data"


@pytest.mark.parametrize(
    "files",
    [[], [FilePart("a", b"1", ""), FilePart("b", b"2", "")], [FilePart("file", b"1", ""), FilePart("file", b"2", "")]],
)
def test_a_form_without_exactly_one_file_is_refused_naming_the_field(things_routes, files):
    error = refused(things_routes, "POST /v1/things/{id}/file", path_params={"id": "5"}, multipart=True, files=files)
    assert (error.reason, error.param) == ("INVALID_PARAMETER", "file")


def test_unknown_form_fields_are_refused_like_query_parameters(things_routes):
    error = refused(
        things_routes, "POST /v1/things/{id}/file", path_params={"id": "5"}, multipart=True,
        files=[FilePart("file", b"1", "")], params=[("notes", "x")],
    )
    assert error.param == "notes"


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ([FilePart("file", b"1", ""), FilePart("note", b"a note", "text/plain")], "note"),
        ([FilePart("note", b"a note", "text/plain")], "note"),  # not taken for the only file
        ([FilePart("file", b"1", ""), FilePart("thumbnail", b"2", "image/png")], "thumbnail"),
    ],
)
def test_a_file_part_beside_the_file_is_refused_not_dropped(things_routes, files, param):
    error = refused(things_routes, "POST /v1/things/{id}/file", path_params={"id": "5"}, multipart=True, files=files)
    assert (error.reason, error.param) == ("INVALID_PARAMETER", param)


# --- responses --------------------------------------------------------------


def test_response_body_answers_with_that_field_defaults_included(things_routes):
    route = things_routes["GET /v1/things/{id}"]
    response = route.rpc.response_class()
    response.thing.id = 12
    response.thing.name = "box"
    output = to_http_response(route, response)
    assert output.content_type == "application/json"
    document = json.loads(output.body)
    # snake_case names, 64-bit ids as numbers, defaults (false, [], {}) shown.
    assert document["id"] == 12 and document["name"] == "box"
    assert document["is_default"] is False and document["tags"] == [] and document["counts"] == {}
    assert document["kind"] == "KIND_UNSPECIFIED"
    assert "weight" not in document  # optional and unset: absent


def test_a_whole_response_is_json(things_routes):
    route = things_routes["GET /v1/things"]
    response = route.rpc.response_class(next_page_token="abc")
    response.things.add(id=1)
    document = json.loads(to_http_response(route, response).body)
    assert document["next_page_token"] == "abc" and document["things"][0]["id"] == 1


def test_an_http_body_response_is_sent_raw(things_routes):
    route = things_routes["GET /v1/things/{id}/file"]
    response = route.rpc.response_class()
    response.file.data = b"RIFF\x00\x01"
    response.file.content_type = "audio/wav"
    output = to_http_response(route, response)
    assert (output.content_type, output.body) == ("audio/wav", b"RIFF\x00\x01")


# --- error mapping ------------------------------------------------------------


@pytest.mark.parametrize(
    "code, reason, status",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_DECODE_FAILED", 400),
        (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", 404),
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED", 401),
        (grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN", 403),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 429),
        (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", 503),
        (grpc.StatusCode.FAILED_PRECONDITION, "MISSING_TRANSCRIPT", 400),
        (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", 409),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", 504),
        (grpc.StatusCode.INTERNAL, "INTERNAL", 500),
        (grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", 501),
        # Reasons that override their code's status:
        (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE", 413),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE", 413),
        (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR", 502),
        (grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR", 502),
    ],
)
def test_grpc_errors_become_http_statuses(code, reason, status):
    assert errors.http_status(ApiError(code, reason, "m")) == status


def test_the_error_body_has_the_public_shape():
    error = ApiError(grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_DECODE_FAILED", "not audio", param="audio")
    assert errors.error_body(error) == {
        "error": {"type": "audio_decode_failed", "message": "not audio", "param": "audio"},
        # The members of problem details (RFC 9457), for the hosted predictor's client.
        "title": "Audio decode failed",
        "detail": "not audio",
        "status": 400,
    }


@pytest.mark.parametrize(
    "key, http, message",
    [
        (
            "PATCH /v1/things/{id}",
            {"path_params": {"id": "1"}, "body": b'{"is_default": "yes"}'},
            "invalid value for 'is_default': expected true or false, got 'yes'",
        ),
        (
            "GET /v1/things",
            {"params": [("page_size", "ten")]},
            "invalid value for 'page_size': expected an integer from -2147483648 to 2147483647, got 'ten'",
        ),
        (
            "GET /v1/things",
            {"params": [("filter.kind", "HUGE")]},
            "invalid value for 'filter.kind': expected one of KIND_UNSPECIFIED, KIND_SMALL, KIND_BIG, got 'HUGE'",
        ),
        (
            "GET /v1/things/{id}",
            {"path_params": {"id": "1e400"}},
            "invalid value for 'id': expected an integer, got '1e400'",
        ),
    ],
)
def test_the_message_says_what_the_field_expects(things_routes, key, http, message):
    assert refused(things_routes, key, **http).message == message


def test_64_bit_integers_are_json_numbers_however_large(things_routes):
    # protobuf's JSON writes those a double cannot hold as strings; /openapi.json says integer.
    route = things_routes["GET /v1/things/{id}"]
    response = route.rpc.response_class(thing={"id": 2**63 - 1, "counts": {"a": -(2**63)}, "label": {"size": 2}})
    document = json.loads(to_http_response(route, response).body)
    assert (document["id"], document["counts"], document["label"]["size"]) == (2**63 - 1, {"a": -(2**63)}, 2)
