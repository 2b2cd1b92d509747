"""Apply the database migrations of every service that owns data, then exit.

`python -m tools.migrate` is what the Kubernetes migration Job runs once
before a rollout (deploy/k8s). The services migrate at start-up as well, under
the same advisory lock (runtime/database.py), so running this first only moves
the work (and any failure) out of the rollout; running it twice changes
nothing.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys

import asyncpg

from runtime import config, database, logs

log = logging.getLogger("tools.migrate")

# The module of each data-owning service that names its schema (SCHEMA) and
# its migrations folder (MIGRATIONS), the two arguments it gives open_pool.
MIGRATION_OWNERS = {
    "gateway": "services.gateway.store",
    "library": "services.library.service",
}


async def migrate_all(url: str) -> dict[str, list[int]]:
    """Migrate every data-owning service's schema; returns the versions applied now, by service."""
    connection = await asyncpg.connect(url, timeout=database.DATABASE_TIMEOUT_SECONDS.value)
    try:
        applied = {}
        for name in sorted(MIGRATION_OWNERS):
            owner = importlib.import_module(MIGRATION_OWNERS[name])
            applied[name] = await database.migrate(connection, owner.SCHEMA, owner.MIGRATIONS)
            log.info("migrated", extra={"schema": owner.SCHEMA, "applied": applied[name]})
        return applied
    finally:
        await connection.close()


def main() -> int:
    logs.setup("migrate")
    url = config.DATABASE_URL.value
    if not url:
        log.error("DATABASE_URL is not set")
        return 2
    try:
        asyncio.run(migrate_all(url))
    except database.CONNECTION_ERRORS as error:
        log.error("database unreachable: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
