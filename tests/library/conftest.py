"""Fixtures of the library tests: a client of the session's running library, fresh accounts."""

from __future__ import annotations

import pytest

from tests.library.helpers import library_client, new_account
from voice.library.v1 import library_pb2_grpc


@pytest.fixture
def account() -> int:
    """An account of this test alone."""
    return new_account()


@pytest.fixture(scope="session")
async def library(mesh):
    """A LibraryService stub on the session's running library."""
    async with library_client(mesh.address("library")) as channel:
        yield library_pb2_grpc.LibraryServiceStub(channel)
