"""Who is calling, and whether they may: an account's key with its scopes.

The gateway authenticates every keyed request once (its HTTP edge, or its own
gRPC services for internal clients) and gets a :class:`Caller`: the account,
the key (by its number, for metering), the key's scopes. What a method needs
is declared in its proto, ``(voice.api.v1.method).scope``; :func:`require`
refuses a caller without it, PERMISSION_DENIED ``INSUFFICIENT_SCOPE`` naming
the scope (HTTP 403). This module knows no scope by name: the gateway's
accounts.py does.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool

from runtime.errors import ApiError
from voice.api.v1 import annotations_pb2

# The metadata by which the gateway tells an internal service which key a request came with
# (its number, for usage), beside the account (runtime.clients.ACCOUNT_ID_METADATA).
KEY_ID_METADATA = "x-key-id"

# The RPC being served in this task: "/voice.gateway.v1.GenerationService/CreateGeneration"
# (runtime.server's interceptor and runtime.inprocess set it), so that a servicer's key check
# knows which method's scope to ask for.
CURRENT_METHOD: contextvars.ContextVar[str] = contextvars.ContextVar("current_method", default="")


@dataclass(frozen=True)
class Caller:
    account_id: int
    # The key's number (the usage of a browser token is its minting key's); 0 for none.
    key_id: int
    scopes: frozenset[str]
    # A browser token rather than a key.
    token: bool = False
    # The number of the key (or browser token) itself that the request came with.
    credential_id: int = 0


def insufficient_scope(scope: str, message: str = "") -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        "INSUFFICIENT_SCOPE",
        message or f"this key lacks the scope {scope!r} that this call needs; use a key that has it",
        param=None,
    )


def require(caller: Caller, scope: str) -> None:
    """INSUFFICIENT_SCOPE unless the caller's key has `scope` ("" needs none)."""
    if scope and scope not in caller.scopes:
        raise insufficient_scope(scope)


def scope_of(path: str) -> str:
    """The scope the method at `path` ("/package.Service/Method") declares in its proto; "" for
    none, or for a method the default descriptor pool does not know."""
    service, _, method = path.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return ""
    return found.GetOptions().Extensions[annotations_pb2.method].scope
