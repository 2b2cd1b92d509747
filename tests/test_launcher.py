"""The launcher behind `make run`: it says "ready" once a generation can be
served, or says plainly that generations are unavailable when synth could not
start; and it waits longer and longer before restarting what keeps dying.

What it does when a service or PostgreSQL dies is in tests/test_faults.py."""

from __future__ import annotations

import asyncio
import pathlib
import uuid

import aiohttp
import pytest

from tests.gateway.conftest import FIXTURES, assert_error, created, upload_form
from tests.make_run import MakeRun, account_before_start, alive, launcher_environment
from tools import mesh as mesh_tools

HELLO = (FIXTURES / "speech_hello.webm").read_bytes()


def test_restart_pauses_double_up_to_the_longest_and_start_over_after_a_long_run():
    backoff = mesh_tools.Backoff(first=1, longest=30)
    assert [backoff.next(ran_for=0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next(ran_for=29.9) == 30  # still dying young
    assert backoff.next(ran_for=30) == 1  # it ran as long as the longest pause: start over
    assert backoff.next(ran_for=0) == 2


def test_restart_settings_at_their_edges(monkeypatch):
    monkeypatch.setenv("MESH_RESTART_DELAY_SECONDS", "0")  # restart at once...
    monkeypatch.setenv("MESH_RESTART_MAX_DELAY_SECONDS", "0")  # ...every time
    assert [mesh_tools.restart_backoff().next(ran_for=0) for _ in range(3)] == [0, 0, 0]
    backoff = mesh_tools.restart_backoff()
    assert [backoff.next(ran_for=0) for _ in range(3)] == [0, 0, 0]
    monkeypatch.setenv("MESH_RESTART_MAX_DELAY_SECONDS", "3600")
    assert mesh_tools.RESTART_MAX_DELAY_SECONDS.value == 3600
    for name, bad in [
        ("MESH_RESTART_DELAY_SECONDS", "-1"),
        ("MESH_RESTART_MAX_DELAY_SECONDS", "3601"),
        ("MESH_READY_TIMEOUT_SECONDS", "0"),
    ]:
        monkeypatch.setenv(name, bad)
        with pytest.raises(SystemExit, match=name):
            getattr(mesh_tools, name.removeprefix("MESH_")).value
        monkeypatch.delenv(name)


async def generate(http: aiohttp.ClientSession, headers: dict[str, str], text: str = "[S1] Hello.") -> aiohttp.ClientResponse:
    return await http.post("/v1/voice/generations", json={"input": text, "max_new_tokens": 256}, headers=headers)


@pytest.mark.slow
async def test_make_run_says_ready_once_a_generation_can_be_served(tmp_path: pathlib.Path):
    env = launcher_environment(tmp_path)
    account = await account_before_start(env, f"rita-{uuid.uuid4().hex[:8]}")
    run = await asyncio.to_thread(MakeRun, env)
    try:
        async with aiohttp.ClientSession(base_url=run.http_url) as http:
            # At the very moment it says ready: the first generation is served, not 404 no_provider.
            response = await generate(http, account.headers)
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "audio/wav"
            response = await http.get("/readyz")
            assert response.status == 200, await response.text()
    finally:
        await asyncio.to_thread(run.stop)
    ready = run.line_with(r"mesh +\| ready: .*").group(0)
    assert "NOT running" not in ready and "UNAVAILABLE" not in ready, ready
    for name in mesh_tools.existing_services():
        assert not alive(run.pid(name)), f"{name} still runs after Ctrl-C"


@pytest.mark.slow
async def test_make_run_without_model_weights_runs_the_rest_and_says_generations_are_unavailable(tmp_path):
    # The real Dia, which cannot be downloaded here: synth fails to start, as without weights.
    env = launcher_environment(tmp_path)
    env.update(DIA_MODEL="nari-labs/Dia-1.6B-0626", HF_HUB_OFFLINE="1")
    account = await account_before_start(env, f"nora-{uuid.uuid4().hex[:8]}")
    run = await asyncio.to_thread(MakeRun, env)
    try:
        ready = run.line_with(r"mesh +\| ready: .*").group(0)
        assert "NOT running: synth" in ready, ready
        assert "GENERATIONS UNAVAILABLE (synth is not running)" in ready, ready
        assert "404 no_provider" in ready and "/readyz 503" in ready, ready
        assert "could not load Dia" in run.output
        async with aiohttp.ClientSession(base_url=run.http_url) as http:
            # What it says holds...
            await assert_error(await generate(http, account.headers), 404, "no_provider")
            response = await http.get("/readyz")
            body = await response.json()
            assert response.status == 503, body
            assert body["upstreams"] == {"library": "SERVING", "gateway": "NOT_SERVING"}
            # ...and the rest of the mesh works.
            sample = await created(await upload_form(http, account, HELLO, "Ada", transcript="Hello world."))
            assert sample["speaker_name"] == "Ada"
            models = await (await http.get("/v1/models", headers=account.headers)).json()
            assert models["data"] == []
    finally:
        await asyncio.to_thread(run.stop)
    assert "restarting it" not in run.output  # it never started, so it is not restarted
    for name in mesh_tools.existing_services():
        if name != "synth":
            assert not alive(run.pid(name)), f"{name} still runs after Ctrl-C"
