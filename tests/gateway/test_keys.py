"""`make key` without DATABASE_URL uses the embedded PostgreSQL of `make run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from services.gateway import accounts
from tests.conftest import ROOT, make_run_environment, start_make_run
from tests.gateway.conftest import make_key


def status_with_key(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_key_is_random_and_only_its_hash_is_kept():
    key = accounts.new_key()
    assert key.startswith("vm_") and key != accounts.new_key()
    assert accounts.key_hash(key) == accounts.key_hash(key) and key not in accounts.key_hash(key)
    assert len(accounts.key_hash(key)) == 64


@pytest.mark.parametrize("name", ["", "-dash-first", "has space", "x" * 65, "semi;colon"])
def test_a_bad_account_name_is_a_usage_error(name):
    result = subprocess.run(
        [sys.executable, "-m", "tools.make_key", name],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": "postgresql://unused/none"},
    )
    assert result.returncode == 2 and "usage: make key ACCOUNT=<name>" in result.stderr


@pytest.mark.parametrize("scopes", ["everything", "generate,nothing", ","])
def test_a_scope_that_is_none_is_a_usage_error(scopes):
    result = subprocess.run(
        [sys.executable, "-m", "tools.make_key", "ops", "--scopes", scopes],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": "postgresql://unused/none"},
    )
    assert result.returncode == 2 and "usage: make key ACCOUNT=<name>" in result.stderr
    assert "no such scope" in result.stderr or "at least one scope" in result.stderr


def test_make_key_gives_every_scope_but_admin_unless_told_otherwise():
    assert accounts.DEFAULT_SCOPES == tuple(scope for scope in accounts.SCOPES if scope != "admin")
    assert accounts.ordered_scopes(["admin", "generate", "admin"]) == ["generate", "admin"]


@pytest.mark.slow
def test_make_key_works_before_and_while_make_run_runs(tmp_path):
    env = make_run_environment(tmp_path)
    postmaster = tmp_path / "postgres" / "postmaster.pid"

    # Alone, it starts the embedded server and stops it again.
    before = make_key("early", env)
    assert not postmaster.exists()

    lines: list[str] = []
    process = start_make_run(env, lines)
    try:
        during = make_key("late", env)
        assert postmaster.exists(), "make key stopped the PostgreSQL that make run uses"
        url = f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}/v1/voice/samples"
        assert status_with_key(url, during) == 200
        assert status_with_key(url, before) == 200  # made before make run, same database
        assert status_with_key(url, "vm_unknown") == 401
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
