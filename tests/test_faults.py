"""Faults under `make run`, as a crashed process or machine causes them: synth
killed with SIGKILL while it generates, the embedded PostgreSQL killed with
SIGKILL while voice samples are uploaded, the embedded SeaweedFS (the audio's
object store) killed while samples are uploaded and generations stored.
Requests fail cleanly and fast, the history and the library keep what was
acknowledged, no object is left that no row names, and the launcher brings the
dead back with no one stepping in."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import uuid

import aiohttp
import pytest

from runtime import objects
from tests.gateway.conftest import FIXTURES, Account, upload_form
from tests.make_run import MakeRun, account_before_start, alive, launcher_environment
from tools import mesh as mesh_tools
from tools import seaweedfs

HELLO = (FIXTURES / "speech_hello.webm").read_bytes()
# No request may take longer than this, whatever is killed under it: a guard against hangs.
REQUEST_BOUND_SECONDS = 60
# How long the mesh may take to serve again after a death (the tiny model loads in seconds).
RECOVERY_BOUND_SECONDS = 120


async def generate(http, account: Account, text: str, max_new_tokens: int) -> tuple[int, dict | None, str]:
    response = await http.post(
        "/v1/voice/generations", json={"input": text, "max_new_tokens": max_new_tokens}, headers=account.headers
    )
    body = None if response.status == 200 else await response.json()
    await response.read()
    return response.status, body, response.headers.get("X-Generation-Id", "")


async def history(http, account: Account) -> dict[str, dict]:
    response = await http.get("/v1/voice/generations", params={"page_size": "100"}, headers=account.headers)
    body = await response.json()
    assert response.status == 200, body
    return {g["id"]: g for g in body["generations"]}


@pytest.mark.slow
async def test_synth_killed_under_load_fails_its_requests_cleanly_and_the_launcher_brings_it_back(tmp_path):
    env = launcher_environment(tmp_path)
    env["MESH_RESTART_DELAY_SECONDS"] = "0.5"
    account = await account_before_start(env, f"kim-{uuid.uuid4().hex[:8]}")
    run = await asyncio.to_thread(MakeRun, env)
    killed = run.pid("synth")
    try:
        async with aiohttp.ClientSession(base_url=run.http_url) as http:
            # A full batch of long generations (3072 frames, the most Dia holds, take the tiny model seconds).
            load = [
                asyncio.create_task(generate(http, account, f"[S1] Request {index}.", 3072)) for index in range(4)
            ]
            async with asyncio.timeout(REQUEST_BOUND_SECONDS):
                while not any(g["status"] == "running" for g in (await history(http, account)).values()):
                    await asyncio.sleep(0.05)
            mark = len(run.lines)
            os.kill(killed, signal.SIGKILL)
            # Every one ends (no hang): done before the kill, or 502 upstream_error.
            outcomes = await asyncio.wait_for(asyncio.gather(*load), REQUEST_BOUND_SECONDS)
            failed = [body for status, body, _ in outcomes if status != 200]
            assert failed, "the kill came too late to hit a request in flight"
            for body in failed:
                assert body["error"]["type"] == "upstream_error", outcomes
                assert "127.0.0.1" not in body["error"]["message"], body  # no internal address
            # The history closed each one: none left queued or running.
            stored = await history(http, account)
            for status, _, generation_id in outcomes:
                expected = ("succeeded", "") if status == 200 else ("failed", "upstream_error")
                assert (stored[generation_id]["status"], stored[generation_id]["error_type"]) == expected

            # The launcher says what happened and restarts synth...
            await asyncio.to_thread(run.line_with, r"mesh +\| synth exited with code -9; restarting it in 0\.5 s", mark)
            back = r"mesh +\| synth restarted \(pid \d+\): SERVING again"
            await asyncio.to_thread(run.line_with, back, mark, RECOVERY_BOUND_SECONDS)
            restarted = run.pid("synth")
            assert restarted != killed and not alive(killed)
            # ...and generations work again, with no manual step; never a 500 meanwhile.
            statuses = []
            async with asyncio.timeout(RECOVERY_BOUND_SECONDS):
                while not statuses or statuses[-1][0] != 200:
                    status, body, _ = await generate(http, account, "[S1] Back again?", 256)
                    statuses.append((status, body["error"]["type"] if body else ""))
                    if status != 200:
                        await asyncio.sleep(0.5)
            assert set(statuses) <= {(200, ""), (502, "upstream_error"), (404, "no_provider")}, statuses
    finally:
        await asyncio.to_thread(run.stop)
    # Ctrl-C stopped what the launcher started, the restarted synth included.
    assert not alive(restarted)
    for name in mesh_tools.existing_services():
        assert not alive(run.pid(name)), f"{name} still runs after Ctrl-C"


@pytest.mark.slow
async def test_postgres_killed_mid_uploads_loses_no_acknowledged_upload_and_recovers_by_itself(tmp_path):
    env = launcher_environment(tmp_path)
    env["MESH_RESTART_DELAY_SECONDS"] = "0.5"
    account = await account_before_start(env, f"pia-{uuid.uuid4().hex[:8]}")
    run = await asyncio.to_thread(MakeRun, env)
    services = {name: run.pid(name) for name in mesh_tools.existing_services()}
    outcomes: list[tuple[int, dict]] = []
    restarted = asyncio.Event()

    async def uploader(http, worker: int) -> None:
        count, after_restart = 0, 0
        while after_restart < 3:  # each worker sees uploads succeed again after the restart
            try:
                response = await asyncio.wait_for(
                    upload_form(http, account, HELLO, f"W{worker}-{count}", transcript="Hello world."),
                    REQUEST_BOUND_SECONDS,
                )
            except aiohttp.ClientError as error:  # a dropped connection: recorded, and refused below
                outcomes.append((0, {"error": {"type": repr(error)}}))
                await asyncio.sleep(0.1)
                continue
            outcomes.append((response.status, await response.json()))
            count += 1
            if response.status == 200 and restarted.is_set():
                after_restart += 1
            elif response.status != 200:
                await asyncio.sleep(0.1)

    try:
        async with aiohttp.ClientSession(base_url=run.http_url) as http:
            workers = [asyncio.create_task(uploader(http, worker)) for worker in range(3)]
            async with asyncio.timeout(RECOVERY_BOUND_SECONDS):
                while sum(status == 200 for status, _ in outcomes) < 3:
                    await asyncio.sleep(0.05)
            mark = len(run.lines)
            killed = run.postgres_pid()
            os.kill(killed, signal.SIGKILL)
            # Waited for in a thread: the uploads go on meanwhile.
            died = rf"mesh +\| PostgreSQL \(pid {killed}\) died; restarting it in 0\.5 s"
            await asyncio.to_thread(run.line_with, died, mark, 30)
            back = r"mesh +\| PostgreSQL restarted \(pid \d+\); services reconnect by themselves"
            await asyncio.to_thread(run.line_with, back, mark, RECOVERY_BOUND_SECONDS)
            restarted.set()
            await asyncio.wait_for(asyncio.gather(*workers), RECOVERY_BOUND_SECONDS)

            # Only 200s and 503s: never a 500, whatever the moment PostgreSQL went.
            refused = [body["error"] for status, body in outcomes if status != 200]
            assert refused, "no upload met the dead database"
            assert {status for status, _ in outcomes} <= {200, 503}, outcomes
            assert {error["type"] for error in refused} <= {"database_unavailable", "unavailable"}, refused

            # Every acknowledged upload is there.
            listed: dict[int, str] = {}
            token = ""
            while True:
                params = {"page_size": "100", **({"page_token": token} if token else {})}
                page = await (await http.get("/v1/voice/samples", params=params, headers=account.headers)).json()
                listed.update({sample["id"]: sample["speaker_name"] for sample in page["voice_samples"]})
                token = page.get("next_page_token", "")
                if not token:
                    break
            acknowledged = {body["id"]: body["speaker_name"] for status, body in outcomes if status == 200}
            assert acknowledged.items() <= listed.items()
            # Nothing dangling: an upload whose row PostgreSQL never took (killed between the object and
            # the row) left no object behind; each sample stored has its two.
            assert len(await keys_under(run, "samples/")) == 2 * len(listed)
        new_postgres = run.postgres_pid()
        assert new_postgres != killed and not alive(killed)
        # No service was restarted for it: the same processes serve on.
        assert {name: run.pid(name) for name in services} == services
        assert not re.search(r"mesh +\| \w+ exited", run.output), run.output[-3000:]
    finally:
        await asyncio.to_thread(run.stop)
    # Ctrl-C stopped the restarted PostgreSQL too.
    assert not alive(new_postgres)


def embedded_store(run: MakeRun) -> objects.ObjectStore:
    """A client of the SeaweedFS that `make run` started, with the credentials it keeps."""
    folder = pathlib.Path(run.env["EMBEDDED_S3_DIR"])
    credentials = seaweedfs.stored_credentials(folder)
    return objects.ObjectStore(
        objects.StoreSettings(
            endpoint_url=f"http://127.0.0.1:{run.env['EMBEDDED_S3_PORT']}",
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
        )
    )


async def keys_under(run: MakeRun, prefix: str) -> set[str]:
    async with embedded_store(run) as store:
        return {item.key async for item in store.list_objects(prefix)}


async def all_samples(http, account: Account) -> dict[int, str]:
    listed: dict[int, str] = {}
    token = ""
    while True:
        params = {"page_size": "100", **({"page_token": token} if token else {})}
        page = await (await http.get("/v1/voice/samples", params=params, headers=account.headers)).json()
        listed.update({sample["id"]: sample["speaker_name"] for sample in page["voice_samples"]})
        token = page.get("next_page_token", "")
        if not token:
            return listed


@pytest.mark.slow
async def test_seaweedfs_killed_mid_uploads_and_generations_loses_nothing_acknowledged_and_recovers(tmp_path):
    env = launcher_environment(tmp_path)
    # The store stays dead 3 s: long enough that uploads (most of whose time is transcoding and speech
    # recognition) and generations surely meet it, however busy the machine.
    env["MESH_RESTART_DELAY_SECONDS"] = "3"
    # Objects a kill leaves without their row are swept within seconds, not the default hour.
    env.update(S3_SWEEP_SECONDS="1", S3_ORPHAN_GRACE_SECONDS="3")
    account = await account_before_start(env, f"sid-{uuid.uuid4().hex[:8]}")
    run = await asyncio.to_thread(MakeRun, env)
    services = {name: run.pid(name) for name in mesh_tools.existing_services()}
    weed = int(run.line_with(r"seaweedfs\| embedded SeaweedFS S3 at \S+, bucket \w+ \(pid (\d+)\)").group(1))
    uploads: list[tuple[int, dict]] = []
    generations: list[tuple[int, dict | None, str, bytes]] = []
    restarted = asyncio.Event()

    async def uploader(http, worker: int) -> None:
        count, after_restart = 0, 0
        while after_restart < 2:
            response = await asyncio.wait_for(
                upload_form(http, account, HELLO, f"U{worker}-{count}", transcript="Hello world."), REQUEST_BOUND_SECONDS
            )
            uploads.append((response.status, await response.json()))
            count += 1
            if response.status == 200:
                after_restart += restarted.is_set()
            else:
                await asyncio.sleep(0.2)

    async def generator(http) -> None:
        after_restart = 0
        while after_restart < 2:
            response = await asyncio.wait_for(
                http.post("/v1/voice/generations", json={"input": "[S1] Kept?", "max_new_tokens": 512}, headers=account.headers),
                REQUEST_BOUND_SECONDS,
            )
            audio = await response.read()
            body = None if response.status == 200 else json.loads(audio)
            generations.append((response.status, body, response.headers.get("X-Generation-Id", ""), audio))
            if response.status == 200:
                after_restart += restarted.is_set()
            else:
                await asyncio.sleep(0.2)

    try:
        async with aiohttp.ClientSession(base_url=run.http_url) as http:
            workers = [asyncio.create_task(uploader(http, n)) for n in range(2)]
            workers += [asyncio.create_task(generator(http)) for _ in range(2)]
            async with asyncio.timeout(RECOVERY_BOUND_SECONDS):
                while sum(s == 200 for s, _ in uploads) < 2 or sum(g[0] == 200 for g in generations) < 2:
                    await asyncio.sleep(0.05)
            mark = len(run.lines)
            os.kill(weed, signal.SIGKILL)
            died = rf"mesh +\| SeaweedFS \(pid {weed}\) died \(exit code -9\); restarting it in 3(\.0)? s"
            await asyncio.to_thread(run.line_with, died, mark, 30)
            back = r"mesh +\| SeaweedFS restarted \(pid (\d+)\); services reconnect by themselves"
            new_weed = int((await asyncio.to_thread(run.line_with, back, mark, RECOVERY_BOUND_SECONDS)).group(1))
            restarted.set()
            await asyncio.wait_for(asyncio.gather(*workers), RECOVERY_BOUND_SECONDS)

            # Only 200s and typed 503s, whatever the moment the store went: never a 500, never a hang.
            refused = [body["error"] for status, body in uploads if status != 200]
            refused += [body["error"] for status, body, _, _ in generations if status != 200]
            assert refused, "no request met the dead store"
            assert {s for s, _ in uploads} | {g[0] for g in generations} <= {200, 503}, refused
            assert {error["type"] for error in refused} == {"storage_unavailable"}, refused

            # Every acknowledged upload is there, its audio with it.
            listed = await all_samples(http, account)
            acknowledged = {body["id"]: body["speaker_name"] for status, body in uploads if status == 200}
            assert acknowledged.items() <= listed.items()
            for sample_id in acknowledged:
                response = await http.get(f"/v1/voice/samples/{sample_id}/audio", headers=account.headers)
                assert response.status == 200 and (await response.read())[:4] == b"RIFF"
            # Every generation answered 200 has its audio, byte for byte; the others failed as their caller heard.
            stored = await history(http, account)
            for status, body, generation_id, audio in generations:
                if status == 200:
                    response = await http.get(f"/v1/voice/generations/{generation_id}/audio", headers=account.headers)
                    assert await response.read() == audio
                else:
                    assert (stored[generation_id]["status"], stored[generation_id]["error_type"]) == (
                        "failed", "storage_unavailable"
                    )
            # Nothing dangling: an upload the kill cut between its two objects, or a generation between its
            # object and its row, left an object that could not be deleted then (the store was down): the
            # sweep deletes it once older than the grace period, and each sample keeps its two objects, each
            # succeeded generation its one.
            succeeded = [g for g in stored.values() if g["status"] == "succeeded"]
            async with asyncio.timeout(30):
                while (
                    len(await keys_under(run, "samples/")),
                    len(await keys_under(run, "generations/")),
                ) != (2 * len(listed), len(succeeded)):
                    await asyncio.sleep(0.5)
        # No service was restarted for it.
        assert {name: run.pid(name) for name in services} == services
        assert not re.search(r"mesh +\| \w+ exited", run.output), run.output[-3000:]
    finally:
        await asyncio.to_thread(run.stop)
    # Ctrl-C stopped the restarted SeaweedFS too.
    assert not alive(new_weed), run.output[-3000:]
