"""`make run` as a person runs it, for the tests of the launcher and of faults:
started in a process group of its own, its output read as it comes (a pipe
left unread would block the launcher once full), stopped with Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
import signal
import tempfile
import threading
import time

from services.gateway import accounts as gateway_accounts
from services.gateway.store import Store
from tests.conftest import MAKE_RUN, make_run_environment, start_make_run
from tests.gateway.conftest import Account
from tools import mesh as mesh_tools


def launcher_environment(tmp_path: pathlib.Path) -> dict[str, str]:
    """make_run_environment, with the embedded PostgreSQL's data outside pytest's
    folders: pytest takes the others' access to those away as another session
    starts, and PostgreSQL, which runs as a user of its own under root, then
    fails mid-test."""
    env = make_run_environment(tmp_path)
    env["EMBEDDED_POSTGRES_DIR"] = str(pathlib.Path(tempfile.mkdtemp(prefix="voicemesh-make-run-")) / "postgres")
    return env


async def account_before_start(env: dict[str, str], name: str) -> Account:
    """An account with a key in the embedded PostgreSQL that `make run` with `env`
    will start, made before it starts: a test can call at the very moment it says ready."""
    server = await asyncio.to_thread(mesh_tools.start_embedded_postgres, pathlib.Path(env["EMBEDDED_POSTGRES_DIR"]))
    try:
        store = await Store.open(server.get_uri())
        try:
            return Account(name, (await gateway_accounts.create_key(store.accounts, name)).key)
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(server.cleanup)


class MakeRun:
    """Started with `env` (launcher_environment); returns once it says ready."""

    def __init__(self, env: dict[str, str], command: tuple[str, ...] = MAKE_RUN) -> None:
        self.env = env
        self.lines: list[str] = []
        self.process = start_make_run(self.env, self.lines, command=command)  # returns at the "ready" line
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.env['GATEWAY_HTTP_PORT']}"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.env[f'{service.upper()}_GRPC_PORT']}"

    def line_with(self, pattern: str, after: int = 0, timeout: float = 120) -> re.Match:
        """The first line from index `after` on that matches `pattern`, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[after:]:
                found = re.search(pattern, line)
                if found:
                    return found
            assert time.monotonic() < deadline, f"no line like {pattern!r}:\n{self.output[-4000:]}"
            time.sleep(0.1)

    def pid(self, service: str) -> int:
        """The pid of the service the launcher last said was SERVING."""
        pids = re.findall(rf"mesh +\| {service} (?:SERVING|restarted) \(pid (\d+)\)", self.output)
        assert pids, f"the launcher named no pid for {service}:\n{self.output[-3000:]}"
        return int(pids[-1])

    def postgres_pid(self) -> int:
        """The pid of the embedded PostgreSQL running now (its data folder says)."""
        return int((pathlib.Path(self.env["EMBEDDED_POSTGRES_DIR"]) / "postmaster.pid").read_text().split()[0])

    def stop(self) -> int:
        """Ctrl-C: the terminal sends SIGINT to the whole foreground group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._reader.join(timeout=10)
        shutil.rmtree(pathlib.Path(self.env["EMBEDDED_POSTGRES_DIR"]).parent, ignore_errors=True)
        return self.process.returncode


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's (PostgreSQL's, when not root): it exists
        pass
    # A zombie is gone but for its parent's reaping.
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
