"""The dashboard's files as the gateway serves them: at `/` without a key, each
with its content type, revalidated by ETag, under a strict Content-Security-Policy,
and nothing of it in the API's /openapi.json. (The browser tests drive the page
itself: test_dashboard_browser.py.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from services.gateway.edge import dashboard
from tests.gateway.conftest import assert_error

FILES = dashboard.load()


class PageParts(HTMLParser):
    """What index.html loads, and anything inline the CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            if "src" in attrs:
                self.loaded.append(attrs["src"])
            else:
                self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "link" and "href" in attrs:
            self.loaded.append(attrs["href"])
        for name in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag} {name}=")


async def test_the_page_is_served_at_the_root_without_a_key(http):
    response = await http.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>voicemesh dashboard</title>" in await response.text()
    assert response.headers["Cache-Control"] == "no-cache"


async def test_the_page_is_under_a_strict_content_security_policy(http):
    response = await http.get("/")
    policy = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert policy["frame-ancestors"] == "'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_loads_only_the_gateways_own_files_and_nothing_inline():
    parts = PageParts()
    parts.feed(FILES["index.html"].body.decode())
    assert parts.inline == []
    assert parts.loaded and all(url.startswith(dashboard.ASSETS) for url in parts.loaded)
    assert {url.removeprefix(dashboard.ASSETS) for url in parts.loaded} <= set(FILES)
    # Every module the scripts import is one of the files, and none comes from elsewhere.
    for name, static in FILES.items():
        if name.endswith(".js"):
            for imported in re.findall(r'from "([^"]+)"', static.body.decode()):
                assert imported.startswith("./") and imported[2:] in FILES, (name, imported)
            assert "innerHTML" not in static.body.decode(), name  # text goes in as text


async def test_each_file_has_its_content_type(http):
    expected = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
    for name, content_type in expected.items():
        response = await http.get(f"/dashboard/{name}")
        assert response.status == 200, name
        assert response.headers["Content-Type"].split(";")[0] == content_type
        assert await response.read() == FILES[name].body


async def test_an_unchanged_file_is_revalidated_with_its_etag(http):
    first = await http.get("/dashboard/app.js")
    etag = first.headers["ETag"]
    again = await http.get("/dashboard/app.js", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    other = await http.get("/dashboard/app.js", headers={"If-None-Match": '"something-else"'})
    assert other.status == 200


async def test_a_file_that_is_not_there_is_404_in_the_api_shape(http):
    await assert_error(await http.get("/dashboard/secrets.txt"), 404, "not_found")
    await assert_error(await http.get("/dashboard/..%2Fedge%2Fconfig.py"), 404, "not_found")


async def test_the_api_around_the_page_keeps_its_behaviour(http):
    await assert_error(await http.post("/", json={}), 401, "unauthorized")
    await assert_error(await http.get("/v1/voice/samples"), 401, "unauthorized")


async def test_openapi_does_not_list_the_page(http):
    paths = (await (await http.get("/openapi.json")).json())["paths"]
    assert "/" not in paths and not any(path.startswith("/dashboard") for path in paths)
