"""The dashboard: the static files of services/gateway/dashboard/, served at `/`.

The page itself needs no key: it is plain HTML, CSS and ES modules (no build
step), and every API call it makes carries the key the user signs in with.
Everything it loads comes from the gateway, under a Content-Security-Policy
that allows nothing else: no inline script or style, no other origin.

The files are read once, at start-up; each answer carries an ETag and
`Cache-Control: no-cache`, so a browser revalidates (a 304 when unchanged)
and never runs yesterday's script against today's API.
"""

from __future__ import annotations

import hashlib
import mimetypes
import pathlib
from dataclasses import dataclass

from aiohttp import web

from runtime.errors import not_found

FOLDER = pathlib.Path(__file__).resolve().parent.parent / "dashboard"
# The page's address; its files are under ASSETS.
INDEX = "/"
ASSETS = "/dashboard/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# Only the gateway's own files, scripts and styles; media and pictures also
# from blob: URLs (audio fetched with the key, a recording being previewed).
# Where the gateway sends audio on to the object store (GATEWAY_AUDIO_REDIRECTS),
# media also from the store's origin: the history's player follows the redirect.
def content_security_policy(media_origins: tuple[str, ...] = ()) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            " ".join(("media-src 'self' blob:", *media_origins)),
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


CONTENT_SECURITY_POLICY = content_security_policy()
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The recorder needs the microphone; nothing else does.
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load(folder: pathlib.Path = FOLDER) -> dict[str, StaticFile]:
    """Every file of the folder (not its subfolders) by name."""
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        body = path.read_bytes()
        files[path.name] = StaticFile(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return files


class Dashboard:
    def __init__(self, folder: pathlib.Path = FOLDER, media_origins: tuple[str, ...] = ()) -> None:
        self.files = load(folder)
        self.headers = {**SECURITY_HEADERS, "Content-Security-Policy": content_security_policy(media_origins)}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """GET (and HEAD) `/` and `/dashboard/{name}`; add them before a catch-all route."""
        router.add_get(INDEX, self.index)
        router.add_get(ASSETS + "{name}", self.asset)

    async def index(self, request: web.Request) -> web.Response:
        return self._answer(request, self.files["index.html"])

    async def asset(self, request: web.Request) -> web.Response:
        static = self.files.get(request.match_info["name"])
        if static is None:
            raise not_found(f"no dashboard file {request.path}")
        return self._answer(request, static)

    def _answer(self, request: web.Request, static: StaticFile) -> web.Response:
        headers = {"ETag": static.etag, "Cache-Control": "no-cache", **self.headers}
        if static.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=static.body, headers={"Content-Type": static.content_type, **headers})


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
