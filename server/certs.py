"""``medim-certs``: the federation's certificate authority, the coordinator's TLS certificate and site keys.

Layout under ``--dir`` (default ``certs/``)::

    ca/ca.key                      CA private key (0600): keep it offline on the coordinator's side
    ca/ca.crt                      CA certificate: give a copy to every hospital (``site.ca_cert``)
    coordinator/server.key         coordinator TLS key (0600)
    coordinator/server.crt         coordinator TLS certificate, signed by the CA, SANs from ``--host``
    sites/<NAME>/node.key          a site's node-authentication key (0600, OpenSSH, ECDSA P-384): stays there
    sites/<NAME>/node.pub          its public key (OpenSSH): what ``flwr supernode register`` reads

``init`` writes the CA and the coordinator certificate; ``site NAME`` writes one site's key pair (best run at
the hospital, which then sends only ``node.pub``). Existing files are never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_MODE, PUBLIC_MODE = 0o600, 0o644


@dataclass(frozen=True)
class CoordinatorFiles:
    """What ``init`` wrote."""

    ca_key: Path
    ca_cert: Path
    server_key: Path
    server_cert: Path


@dataclass(frozen=True)
class SiteKeys:
    """A site's node-authentication key pair."""

    private_key: Path
    public_key: Path


def coordinator_files(root: Path) -> CoordinatorFiles:
    """The paths ``init`` writes under ``root``."""
    return CoordinatorFiles(
        ca_key=root / "ca" / "ca.key",
        ca_cert=root / "ca" / "ca.crt",
        server_key=root / "coordinator" / "server.key",
        server_cert=root / "coordinator" / "server.crt",
    )


def site_keys(root: Path, name: str) -> SiteKeys:
    """The paths ``site NAME`` writes under ``root``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"site name {name!r} is invalid: a plain folder name is required")
    return SiteKeys(
        private_key=root / "sites" / name / "node.key", public_key=root / "sites" / name / "node.pub"
    )


def _write(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Create ``path`` with ``mode`` from the start (no window with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if not force:
            raise FileExistsError(f"{path} exists: pass --force to replace it")
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int):
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def init_coordinator(
    root: Path, *, hosts: list[str], days: int = 825, force: bool = False
) -> CoordinatorFiles:
    """A CA and the coordinator's TLS certificate (ECDSA P-256) valid for every name/IP in ``hosts``."""
    if not hosts:
        raise ValueError("at least one --host (the name or IP address sites connect to) is required")
    files = coordinator_files(root)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medim federation CA")])
    ca_cert = (
        _builder("medim federation CA", ca_name, ca_key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _builder(hosts[0], ca_name, server_key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.ca_key, _pem_key(ca_key), mode=KEY_MODE, force=force)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE, force=force)
    _write(files.server_key, _pem_key(server_key), mode=KEY_MODE, force=force)
    _write(
        files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE, force=force
    )
    return files


def make_site_keys(root: Path, name: str, *, force: bool = False) -> SiteKeys:
    """A site's ECDSA P-384 key pair in the OpenSSH formats ``flower-supernode`` and ``flwr`` read."""
    keys = site_keys(root, name)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(keys.private_key, private, mode=KEY_MODE, force=force)
    _write(keys.public_key, public + f" medim-site-{name}\n".encode(), mode=PUBLIC_MODE, force=force)
    return keys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medim-certs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("certs"), help="certificate folder (default certs/)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="CA + coordinator TLS certificate")
    init.add_argument(
        "--host", action="append", required=True, help="name or IP the sites connect to (repeatable)"
    )
    init.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    site = sub.add_parser("site", help="one site's node-authentication key pair")
    site.add_argument("name", help="site name, e.g. hospital-a")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "init":
            files = init_coordinator(args.dir, hosts=args.host, days=args.days, force=args.force)
            print(f"CA: {files.ca_cert} (key {files.ca_key}, keep offline)")
            print(f"coordinator: {files.server_cert} (key {files.server_key}) for {', '.join(args.host)}")
        else:
            keys = make_site_keys(args.dir, args.name, force=args.force)
            print(f"site {args.name}: private key {keys.private_key} (stays at the site)")
            print(f"site {args.name}: public key {keys.public_key} (send to the coordinator)")
    except (FileExistsError, ValueError) as err:
        print(f"medim-certs: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
