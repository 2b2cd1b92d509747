"""CORS: browser pages of the origins in GATEWAY_CORS_ORIGINS may call the API.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
from an allowed origin is answered 204 here, before any key check (browsers
send no credentials with it); an allowed origin's other requests get
``Access-Control-Allow-Origin`` and the headers a page may read. Requests from
other origins are served as before, without CORS headers, so the browser keeps
their answers from the page.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from services.gateway.edge.config import cors_origins

ALLOWED_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Prefer"
EXPOSED_HEADERS = "X-Generation-Id, X-Request-Id, Retry-After"
PREFLIGHT_MAX_AGE_SECONDS = "600"


def allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get(hdrs.ORIGIN, "")
    allowed = cors_origins()
    if origin and ("*" in allowed or origin.rstrip("/") in allowed):
        return origin
    return None


@web.middleware
async def preflight(request: web.Request, handler) -> web.StreamResponse:
    if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        origin = allowed_origin(request)
        if origin is not None:
            return web.Response(
                status=204,
                headers={
                    hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
                    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: request.headers.get(
                        hdrs.ACCESS_CONTROL_REQUEST_HEADERS, ALLOWED_HEADERS
                    ),
                    hdrs.ACCESS_CONTROL_MAX_AGE: PREFLIGHT_MAX_AGE_SECONDS,
                },
            )
    return await handler(request)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare hook: the CORS headers of an allowed origin's answer (preflight included)."""
    origin = allowed_origin(request)
    if origin is None:
        return
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
    response.headers.add(hdrs.VARY, hdrs.ORIGIN)
