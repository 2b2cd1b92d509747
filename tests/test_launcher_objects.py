"""The object store under `make run`: without S3_ENDPOINT_URL it starts the
embedded SeaweedFS (every port on loopback, its bucket made, its URL and
credentials handed to the services that keep audio), says so, and brings it
back with its data when it is killed; with S3_ENDPOINT_URL it starts none;
a port it needs that is taken is named with its setting, and nothing starts."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import socket
import stat
import subprocess
import sys

import aiohttp
import pytest

from runtime import objects
from tests.make_run import MakeRun, alive, launcher_environment
from tools import mesh as mesh_tools
from tools import seaweedfs

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECOVERY_BOUND_SECONDS = 120
# The launcher with the library alone: the cheapest mesh that keeps audio.
LIBRARY_ONLY = (sys.executable, "-m", "tools.mesh", "--services", "library")


def process_environment(pid: int) -> dict[str, str]:
    raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def listening_addresses(port: int) -> set[str]:
    """The local addresses that listen on TCP `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


@pytest.mark.slow
async def test_make_run_starts_seaweedfs_on_loopback_and_brings_it_back_with_its_data(tmp_path):
    env = launcher_environment(tmp_path)
    env["MESH_RESTART_DELAY_SECONDS"] = "0.5"
    run = await asyncio.to_thread(MakeRun, env)
    try:
        started = run.line_with(r"seaweedfs\| embedded SeaweedFS S3 at (http://127\.0\.0\.1:(\d+)), bucket voicemesh \(pid (\d+)\)")
        url, weed = started.group(1), int(started.group(3))
        assert started.group(2) == env["EMBEDDED_S3_PORT"]
        ready = run.line_with(r"mesh +\| ready: .*").group(0)
        assert f"audio store: embedded SeaweedFS at {url}, bucket voicemesh" in ready, ready
        assert "NOT running" not in ready, ready

        # Every one of its ports is its setting's, on loopback alone.
        for port in seaweedfs.PORTS:
            assert listening_addresses(int(env[port.setting.name])) == {"127.0.0.1"}, port.setting.name
        # The services that keep audio got its URL and credentials, as they get DATABASE_URL.
        handed = {name: process_environment(run.pid(name)) for name in sorted(mesh_tools.NEEDS_OBJECTS)}
        for name, service_env in handed.items():
            assert service_env["S3_ENDPOINT_URL"] == url, name
            assert service_env["S3_BUCKET"] == "voicemesh", name
        settings = objects.StoreSettings.from_environment(handed["library"])
        identities = pathlib.Path(env["EMBEDDED_S3_DIR"]) / seaweedfs.IDENTITIES_FILE
        assert stat.S_IMODE(identities.stat().st_mode) == 0o600
        assert settings.secret_access_key in identities.read_text()

        async with objects.ObjectStore(settings) as store, aiohttp.ClientSession() as http:
            audio = os.urandom(200_000)
            await store.put("before-the-kill.wav", audio)
            # The bucket is private: without credentials, no.
            async with http.get(f"{url}/voicemesh/before-the-kill.wav") as answer:
                assert answer.status == 403

            mark = len(run.lines)
            os.kill(weed, signal.SIGKILL)
            died = rf"mesh +\| SeaweedFS \(pid {weed}\) died \(exit code -9\); restarting it in 0\.5 s"
            await asyncio.to_thread(run.line_with, died, mark, 30)
            back = r"mesh +\| SeaweedFS restarted \(pid (\d+)\); services reconnect by themselves"
            restarted = int((await asyncio.to_thread(run.line_with, back, mark, RECOVERY_BOUND_SECONDS)).group(1))
            assert restarted != weed and not alive(weed)

            # Same URL, same credentials, and what was stored is there.
            assert await store.get("before-the-kill.wav") == audio
            await store.put("after-the-restart.wav", b"RIFF")
            assert [item.key async for item in store.list_objects()] == ["after-the-restart.wav", "before-the-kill.wav"]
        # No service was restarted for it.
        assert not re.search(r"mesh +\| \w+ exited", run.output), run.output[-3000:]
    finally:
        await asyncio.to_thread(run.stop)
    # Ctrl-C stopped the restarted SeaweedFS too, and it left no socket files behind.
    assert not alive(restarted)
    assert not (seaweedfs.SOCKET_FOLDER / f"seaweedfs-s3-{env['EMBEDDED_S3_PORT']}.sock").exists()


@pytest.mark.slow
async def test_with_s3_endpoint_url_no_seaweedfs_is_started_and_its_ports_may_be_taken(tmp_path, object_server):
    env = launcher_environment(tmp_path)
    env.update(object_server.settings.environment())  # an S3 of the operator's
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["EMBEDDED_S3_PORT"])))
        taken.listen()
        run = await asyncio.to_thread(MakeRun, env, LIBRARY_ONLY)
        try:
            ready = run.line_with(r"mesh +\| ready: .*").group(0)
            settings = object_server.settings
            assert f"audio store: S3 at {settings.endpoint_url}, bucket {settings.bucket}" in ready, ready
            assert "seaweedfs|" not in run.output and "SeaweedFS" not in run.output
            assert process_environment(run.pid("library"))["S3_ENDPOINT_URL"] == settings.endpoint_url
        finally:
            await asyncio.to_thread(run.stop)
    assert not pathlib.Path(env["EMBEDDED_S3_DIR"]).exists()


def test_a_taken_port_of_seaweedfs_is_named_with_its_setting_and_nothing_starts(tmp_path):
    env = launcher_environment(tmp_path)
    names = ["EMBEDDED_S3_PORT", "EMBEDDED_S3_VOLUME_GRPC_PORT"]
    with socket.socket() as first, socket.socket() as second:
        for sock, name in zip((first, second), names):
            sock.bind(("127.0.0.1", int(env[name])))
            sock.listen()
        done = subprocess.run(
            ["make", "--no-print-directory", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
            check=False,
        )
    assert done.returncode != 0, done.stdout + done.stderr
    for name, what in [("EMBEDDED_S3_PORT", "S3 API port"), ("EMBEDDED_S3_VOLUME_GRPC_PORT", "gRPC port of the volume server")]:
        expected = f"port {env[name]} is in use — is another mesh running? ({name}, {what} of the embedded SeaweedFS)"
        assert expected in done.stdout, done.stdout
    assert "nothing started" in done.stdout
    assert not pathlib.Path(env["EMBEDDED_S3_DIR"]).exists()
    assert not pathlib.Path(env["EMBEDDED_POSTGRES_DIR"]).exists()


def test_the_embedded_credentials_are_made_once_kept_private_and_replaced_by_the_settings(tmp_path):
    folder = tmp_path / "seaweedfs"
    made = seaweedfs.stored_credentials(folder)
    assert len(made.secret_access_key) >= 32
    path = folder / seaweedfs.IDENTITIES_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert seaweedfs.stored_credentials(folder) == made  # the next `make run` signs with the same
    given = seaweedfs.Credentials("OPERATORKEY", "operator-secret-key-of-forty-characters-")
    assert seaweedfs.stored_credentials(folder, given) == given
    assert seaweedfs.stored_credentials(folder) == given
    (identity,) = json.loads(path.read_text())["identities"]
    assert identity["credentials"] == [{"accessKey": "OPERATORKEY", "secretKey": given.secret_access_key}]
