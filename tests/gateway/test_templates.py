"""Path templates of google.api.http rules: what matches, and what each variable captures."""

from __future__ import annotations

import pytest

from services.gateway.edge import templates


@pytest.mark.parametrize(
    "template, path, expected",
    [
        ("/v1/voice/samples", "/v1/voice/samples", {}),
        ("/v1/voice/samples/{id}", "/v1/voice/samples/12", {"id": "12"}),
        ("/v1/voice/samples/{id}/audio", "/v1/voice/samples/12/audio", {"id": "12"}),
        ("/v1/voice/samples/{id}", "/v1/voice/samples/a%20b%2Fc", {"id": "a b/c"}),
        ("/v1/voice/generations:stream", "/v1/voice/generations:stream", {}),
        ("/v1/things/{id}:cancel", "/v1/things/7:cancel", {"id": "7"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2", {"name": "shelves/1/books/2"}),
        ("/v1/{book.name=shelves/*}/pages", "/v1/shelves/x/pages", {"book.name": "shelves/x"}),
        ("/files/{path=**}", "/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/v1/*/items", "/v1/anything/items", {}),
    ],
)
def test_matching_paths_give_their_variables(template, path, expected):
    assert templates.parse(template).match(path) == expected


@pytest.mark.parametrize(
    "template, path",
    [
        ("/v1/voice/samples/{id}", "/v1/voice/samples/12/audio"),
        ("/v1/voice/samples/{id}", "/v1/voice/samples/"),
        ("/v1/voice/samples/{id}", "/v1/voice/samples"),
        ("/v1/voice/generations/{id}", "/v1/voice/generations:stream"),
        ("/v1/voice/generations:stream", "/v1/voice/generations"),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books"),
        ("/v1/voice/samples", "/v1/voice/samplesX"),
    ],
)
def test_other_paths_do_not_match(template, path):
    assert templates.parse(template).match(path) is None


@pytest.mark.parametrize(
    "bad", ["v1/things", "/v1/{id", "/v1/{bad-name}", "/v1/{id=a{b}}", "/v1/th{ing"]
)
def test_malformed_templates_are_refused(bad):
    with pytest.raises(templates.TemplateError):
        templates.parse(bad)


def test_openapi_path_drops_variable_patterns():
    assert templates.parse("/v1/{name=shelves/*}/books/{id}").openapi_path == "/v1/{name}/books/{id}"


def test_literal_segments_rank_specific_templates_first():
    specific = templates.parse("/v1/things/special")
    general = templates.parse("/v1/things/{id}")
    assert specific.literal_segments > general.literal_segments
