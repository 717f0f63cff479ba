"""Certificates made at run time: a private CA and server certificates it signed.

Nothing is checked in: each test that needs TLS makes its own authority (EC
P-256 keys, valid from five minutes ago for a day), so "a client that trusts
another CA" is just a second call.

    authority = CertificateAuthority.create(tmp_path / "ca")
    server = authority.issue(tmp_path / "server")  # localhost and 127.0.0.1
    listen = server.endpoint(port)                  # ssl:PORT:interface=...:privateKey=...
    PushClient(..., ca_file=str(authority.ca_file))
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.endpoints import quoteStringArgument

#: What a server certificate names unless told otherwise: the loopback tests use.
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _window() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _subject_names(names: Sequence[str]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return general


@attrs.frozen
class ServerCertificate:
    """A certificate and its key, as PEM files."""

    cert_file: Path
    key_file: Path
    names: tuple[str, ...]

    def endpoint(self, port: int, interface: str = "127.0.0.1") -> str:
        """A Twisted ``ssl:`` server endpoint string serving this certificate."""
        return (
            f"ssl:{port}:interface={interface}"
            f":privateKey={quoteStringArgument(str(self.key_file))}"
            f":certKey={quoteStringArgument(str(self.cert_file))}"
        )


@attrs.frozen
class CertificateAuthority:
    """A self-signed CA; ``ca_file`` is what clients are told to trust."""

    directory: Path
    ca_file: Path
    key: Any = attrs.field(repr=False)
    certificate: Any = attrs.field(repr=False)

    @classmethod
    def create(cls, directory: Path, name: str = "pigeonpush test CA") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = _window()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(directory, ca_file, key, certificate)

    def issue(self, directory: Path, names: Sequence[str] = LOOPBACK_NAMES) -> ServerCertificate:
        """A server certificate for ``names`` (DNS names and IP addresses) signed here."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = _window()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(_subject_names(names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = directory / "cert.pem", directory / "key.pem"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key_file, key)
        return ServerCertificate(cert_file, key_file, tuple(names))
