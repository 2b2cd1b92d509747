"""What a client hears when something below the service fails: PostgreSQL gone
mid-statement, an upstream that cannot be reached. Never a 500, never an
internal address."""

from __future__ import annotations

import logging

import asyncpg
import grpc
import pytest

from runtime import database
from runtime.errors import ApiError
from tests.conftest import free_port


@pytest.mark.parametrize(
    "lost",
    [
        asyncpg.exceptions.InternalClientError("got result for unknown protocol state 3"),
        asyncpg.exceptions.ProtocolError("unexpected message"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_what_a_crashing_postgresql_leaves_behind_is_database_unavailable(lost):
    with pytest.raises(ApiError) as caught, database.database_errors():
        raise lost
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")


async def test_a_query_bug_is_not_mistaken_for_a_lost_database():
    with pytest.raises(asyncpg.exceptions.UndefinedTableError), database.database_errors():
        raise asyncpg.exceptions.UndefinedTableError("relation does not exist")


async def test_grpcs_own_failure_text_is_logged_not_passed_on(caplog):
    port = free_port()  # nothing listens there
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/test.Nobody/Call")(b"", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    assert str(port) in caught.value.details()  # gRPC's text names the address...
    with caplog.at_level(logging.WARNING, logger="runtime.errors"):
        error = ApiError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert str(port) not in error.message and "ipv4" not in error.message  # ...ours does not
    assert any(str(port) in str(getattr(record, "details", "")) for record in caplog.records)  # the log keeps it
