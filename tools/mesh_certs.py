"""`python -m tools.mesh_certs OUT`: a CA for the mesh and a certificate for each service.

For mutual TLS between the services (runtime/tls.py), in the layout the
Kubernetes prod overlay mounts (one Secret per service; deploy/k8s/README.md,
"Internal TLS"), which is also what cert-manager writes:

    OUT/ca.crt, OUT/ca.key            the mesh's CA (keep ca.key offline)
    OUT/<service>/tls.crt, tls.key    the service's certificate and key
    OUT/<service>/ca.crt              the CA certificate, to check the others

Each service's certificate is good as a server and as a client, and names
the service as Kubernetes resolves it in NAMESPACE, localhost, 127.0.0.1 and
the mesh-wide name that GRPC_TLS_SERVER_NAME selects. An existing CA in OUT
is reused, so running it again renews the services' certificates alone.
Keys are EC P-256, written with mode 0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import pathlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime import config

# The name every service's certificate carries besides its own, for GRPC_TLS_SERVER_NAME.
MESH_NAME = "voicemesh.internal"


def _write(path: pathlib.Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644), "wb") as file:
        file.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _builder(subject: str, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew between machines
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def certificate_authority(out: pathlib.Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in `out`, made when there is none."""
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voicemesh internal CA")])
    cert = (
        _builder("voicemesh internal CA", name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def service_names(service: str, namespace: str) -> list[x509.GeneralName]:
    dns = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    return [x509.DNSName(name) for name in [*dns, MESH_NAME, "localhost"]] + [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


def make_certs(out: pathlib.Path, services: list[str], namespace: str = "voicemesh", days: int = 365) -> None:
    ca_cert, ca_key = certificate_authority(out, days)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    for service in services:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(service, ca_cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(service_names(service, namespace)), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(out / service / "tls.key", _key_pem(key), private=True)
        _write(out / service / "tls.crt", cert.public_bytes(serialization.Encoding.PEM))
        _write(out / service / "ca.crt", ca_pem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mesh_certs", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path, help="folder to write to")
    parser.add_argument("--namespace", default="voicemesh", help="Kubernetes namespace the services run in")
    parser.add_argument("--days", type=int, default=365, help="validity of new certificates")
    parser.add_argument(
        "--services", default=",".join(config.SERVICE_PORTS), help="comma-separated services (default: all)"
    )
    args = parser.parse_args(argv)
    services = [name.strip() for name in args.services.split(",") if name.strip()]
    make_certs(args.out, services, args.namespace, args.days)
    print(f"CA and certificates of {', '.join(services)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
