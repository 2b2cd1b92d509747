"""Mutual TLS between the mesh's services, when the certificate settings are set.

Off (all three file settings empty), every internal gRPC connection is
plaintext, as `make run` uses them on the loopback. On (all three set), every
server listens with TLS and requires a client certificate signed by the CA,
and every channel to another service presents this service's certificate and
checks the server's against the same CA: only holders of a certificate of the
mesh's CA can call any service. Half a configuration is refused at start-up
rather than silently left plaintext.

Servers' certificates are checked for the host of the address called, or for
GRPC_TLS_SERVER_NAME when set: providers are called at their pod IP, which
no certificate issued ahead of time can name.

Files are read when a server starts or a channel opens; a renewed
certificate takes effect when the service restarts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import grpc

from runtime import config

CA_FILE = config.setting(
    "GRPC_TLS_CA_FILE",
    "",
    "PEM CA certificate(s) of the mesh; with GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE turns on mutual TLS "
    "for all internal gRPC: servers require client certificates it signed, channels check servers against it",
)
CERT_FILE = config.setting(
    "GRPC_TLS_CERT_FILE",
    "",
    "PEM certificate (chain) this service presents as a gRPC server and as a client of the others (mutual TLS)",
)
KEY_FILE = config.setting("GRPC_TLS_KEY_FILE", "", "PEM private key of GRPC_TLS_CERT_FILE")
SERVER_NAME = config.setting(
    "GRPC_TLS_SERVER_NAME",
    "",
    "name servers' certificates are checked for instead of the host of the address called (every "
    "certificate of the mesh must then carry it); for services reached at addresses no certificate "
    "names, such as synth providers at their pod IP",
)
FILES = (CA_FILE, CERT_FILE, KEY_FILE)


@dataclass(frozen=True)
class Credentials:
    """The mesh's CA and this service's certificate and key, read from their files."""

    ca: bytes
    cert: bytes
    key: bytes
    server_name: str

    def server(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def load(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials the settings name (of this process, or of `environ`); None when TLS is off."""
    environ = os.environ if environ is None else environ
    paths = {setting.name: setting.value_in(environ) for setting in FILES}
    if not any(paths.values()):
        return None
    missing = [name for name, path in paths.items() if not path]
    if missing:
        raise SystemExit(f"internal TLS is half configured: {', '.join(missing)} not set (set all three or none)")
    contents = {}
    for name, path in paths.items():
        try:
            with open(path, "rb") as file:
                contents[name] = file.read()
        except OSError as error:
            raise SystemExit(f"cannot read {name}={path}: {error.strerror}") from None
    return Credentials(
        ca=contents[CA_FILE.name],
        cert=contents[CERT_FILE.name],
        key=contents[KEY_FILE.name],
        server_name=SERVER_NAME.value_in(environ),
    )


def open_channel(
    address: str,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
    credentials: Credentials | None = None,
) -> grpc.aio.Channel:
    """A channel to a service of the mesh: mutual TLS with `credentials`, else plaintext."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=list(interceptors))
    return grpc.aio.secure_channel(
        address,
        credentials.channel(),
        options=list(options) + credentials.channel_options(),
        interceptors=list(interceptors),
    )
