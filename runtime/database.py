"""PostgreSQL for the services that own data (asyncpg).

Each such service keeps its tables in a schema of its own (``library``,
``gateway``) and its migrations as numbered plain-SQL files
(``services/<name>/migrations/001_create_samples.sql``). :func:`open_pool`
applies the missing ones at start-up inside a transaction, under a
PostgreSQL advisory lock, and records each version in
``<schema>.schema_migrations``, so several replicas can start at once and only
one migrates.

A lost database connection becomes UNAVAILABLE with reason
``DATABASE_UNAVAILABLE`` (HTTP 503), never a hang: connections and statements
have timeouts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pathlib
import re
from typing import AsyncIterator

import asyncpg
import grpc
import prometheus_client

from runtime import config
from runtime.errors import ApiError

log = logging.getLogger("runtime.database")

DATABASE_TIMEOUT_SECONDS = config.setting(
    "DATABASE_TIMEOUT_SECONDS", 10.0, "connect and statement timeout for PostgreSQL", float
)
DATABASE_POOL_SIZE = config.setting(
    "DATABASE_POOL_SIZE", 10, "most PostgreSQL connections one service process holds", int
)

# Retry-After of DATABASE_UNAVAILABLE: a restarted PostgreSQL or a failover answers within seconds,
# and the pools reconnect on the next request.
UNAVAILABLE_RETRY_SECONDS = 2.0

# Labelled by the pool's schema, so that a service without a pool exposes none of them
# (an unlabelled gauge would read 0, "database down", wherever this module is imported).
POOL_CONNECTIONS = prometheus_client.Gauge(
    "database_pool_connections", "PostgreSQL connections of the pool, by state (in_use, idle).", ["schema", "state"]
)
POOL_MAX_CONNECTIONS = prometheus_client.Gauge(
    "database_pool_max_connections", "Most connections the pool may hold (DATABASE_POOL_SIZE).", ["schema"]
)
DATABASE_UP = prometheus_client.Gauge(
    "database_up", "1 if the last readiness check reached PostgreSQL (every 5 s), 0 if it did not.", ["schema"]
)
# The schema of each open pool, by id (asyncpg's Pool takes no attributes of ours).
_POOL_SCHEMAS: dict[int, str] = {}

_MIGRATION_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")
# A migration's first line may say what must hold before it is applied (a query answering true).
_REQUIRES = re.compile(r"^--\s*requires:\s*(.+)$")

# Errors that mean "the database is not there right now", as opposed to a bug in a query.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # A connection lost in the middle of a transaction leaves asyncpg's protocol
    # half-way, and the commit or rollback after it fails with this.
    asyncpg.exceptions.InternalClientError,
)


def unavailable() -> ApiError:
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "the database is unavailable; nothing was changed, try again shortly",
        retry_after=UNAVAILABLE_RETRY_SECONDS,
    )


@contextlib.contextmanager
def database_errors():
    """Turn a lost connection inside the block into DATABASE_UNAVAILABLE."""
    try:
        yield
    except ApiError:
        raise
    except CONNECTION_ERRORS as error:
        log.warning("database unavailable: %s", type(error).__name__)
        raise unavailable() from error


def requirement(path: pathlib.Path) -> str | None:
    """The query a migration waits for (its first line, ``-- requires: SELECT ...``), if any."""
    first = path.read_text().split("\n", 1)[0]
    found = _REQUIRES.match(first.strip())
    return found.group(1) if found else None


def migrations(folder: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be NNN_name.sql: {path.name}")
        found.append((int(match.group(1)), path))
    versions = [version for version, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {folder}")
    return found


async def migrate(connection: asyncpg.Connection, schema: str, folder: pathlib.Path) -> list[int]:
    """Apply the migrations not yet recorded; returns the versions applied now.

    A migration whose first line is ``-- requires: <query>`` waits until that query answers
    true (the columns that held audio go once tools/move_audio.py has moved it): it is not
    applied while it does not, and neither is any migration after it."""
    lock_key = int.from_bytes(hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True)
    await connection.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await connection.fetch(f"SELECT version FROM {schema}.schema_migrations")}
        applied = []
        for version, path in migrations(folder):
            if version in done:
                continue
            condition = requirement(path)
            if condition is not None:
                async with connection.transaction():
                    await connection.execute(f"SET LOCAL search_path TO {schema}")
                    met = await connection.fetchval(condition)
                if not met:
                    log.warning(
                        "migration waits for its requirement",
                        extra={"schema": schema, "migration": path.name, "requires": condition},
                    )
                    break
            async with connection.transaction():
                await connection.execute(f"SET LOCAL search_path TO {schema}")
                await connection.execute(path.read_text())
                await connection.execute(
                    f"INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    path.name,
                )
            log.info("applied migration", extra={"schema": schema, "migration": path.name})
            applied.append(version)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", lock_key)


async def open_pool(schema: str, migrations_folder: pathlib.Path, url: str | None = None) -> asyncpg.Pool:
    """Connect, migrate, and return a pool whose connections use `schema` first."""
    url = url or config.DATABASE_URL.value
    if not url:
        raise SystemExit("DATABASE_URL is not set")
    timeout = DATABASE_TIMEOUT_SECONDS.value
    connection = await asyncpg.connect(url, timeout=timeout)
    try:
        await migrate(connection, schema, migrations_folder)
    finally:
        await connection.close()
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=DATABASE_POOL_SIZE.value,
        timeout=timeout,
        command_timeout=timeout,
        server_settings={"search_path": schema},
    )
    _POOL_SCHEMAS[id(pool)] = schema
    POOL_CONNECTIONS.labels(schema, "in_use").set_function(lambda: pool.get_size() - pool.get_idle_size())
    POOL_CONNECTIONS.labels(schema, "idle").set_function(pool.get_idle_size)
    POOL_MAX_CONNECTIONS.labels(schema).set(pool.get_max_size())
    DATABASE_UP.labels(schema).set(1)
    return pool


async def is_reachable(pool: asyncpg.Pool) -> bool:
    """Readiness probe: one round trip (its answer is also the database_up metric)."""
    try:
        async with pool.acquire(timeout=DATABASE_TIMEOUT_SECONDS.value) as connection:
            await connection.fetchval("SELECT 1", timeout=DATABASE_TIMEOUT_SECONDS.value)
        reachable = True
    except CONNECTION_ERRORS:
        reachable = False
    if id(pool) in _POOL_SCHEMAS:
        DATABASE_UP.labels(_POOL_SCHEMAS[id(pool)]).set(1 if reachable else 0)
    return reachable


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection for single statements, each its own transaction (one round trip, not three),
    with connection loss reported as DATABASE_UNAVAILABLE."""
    with database_errors():
        async with pool.acquire() as connection:
            yield connection


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction, with connection loss reported as DATABASE_UNAVAILABLE."""
    with database_errors():
        async with pool.acquire() as connection:
            async with connection.transaction():
                yield connection
