"""`python -m tools.migrate`, what the migration Job runs, against a real PostgreSQL."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import asyncpg

from runtime.database import migrations
from tests.conftest import ROOT, free_port
from tests.deploy import code_facts
from tools import mesh, migrate


def run_migrate(url: str) -> subprocess.CompletedProcess:
    # An empty DATABASE_URL stands for none, whatever the test session has.
    env = mesh.mesh_environment(database_url=None) | {"DATABASE_URL": url, "LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "tools.migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_migrates_every_service_that_owns_data():
    assert set(migrate.MIGRATION_OWNERS) == code_facts.database_users()


async def recorded_versions(url: str, schema: str) -> list[int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(f"SELECT version FROM {schema}.schema_migrations ORDER BY version")
        return [row["version"] for row in rows]
    finally:
        await connection.close()


async def test_it_applies_every_migration_once(database):
    first = run_migrate(database.url)
    assert first.returncode == 0, first.stdout + first.stderr
    again = run_migrate(database.url)
    assert again.returncode == 0, again.stdout + again.stderr
    reports = [
        json.loads(line) for line in (again.stdout + again.stderr).splitlines() if line.startswith("{")
    ]
    applied_again = {r["schema"]: r["applied"] for r in reports if r["message"] == "migrated"}
    assert applied_again == {importlib.import_module(m).SCHEMA: [] for m in migrate.MIGRATION_OWNERS.values()}
    for name, module_name in migrate.MIGRATION_OWNERS.items():
        owner = importlib.import_module(module_name)
        expected = [version for version, _ in migrations(owner.MIGRATIONS)]
        assert expected, f"{name} has no migrations"
        assert await recorded_versions(database.url, owner.SCHEMA) == expected


def test_an_unreachable_database_fails_with_a_clear_message():
    result = run_migrate(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "database unreachable" in output
    assert "Traceback" not in output


def test_without_a_database_url_it_says_so():
    result = run_migrate("")
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stdout + result.stderr
