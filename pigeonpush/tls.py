"""Client-side TLS, one way for every hop: devices to push servers, delivery
to push servers (AMP), push servers to delivery, and Redis (``rediss://``).

The server side needs nothing of ours: listening endpoints are Twisted's
``ssl:`` strings. A client verifies the server's certificate (chain and host
name, with ``optionsForClientTLS``) against the authorities of a CA file, or
the system's store when none is given (``platformTrust``). ``ClientTLS.insecure``
turns verification off for tests; it says so in the log each time it is made.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: The two transports an address can name (see ``hostport.PeerAddress``).
TCP = "tcp"
TLS = "tls"
TRANSPORTS = (TCP, TLS)

_END_MARKER = b"-----END CERTIFICATE-----"


def load_trust_root(path: str, *, option: str = "CA file") -> Any:
    """The certificates of a PEM file as a trust root (read once, at start);
    ValueError naming ``option`` when the file cannot be read or holds none."""
    try:
        with open(path, "rb") as pem:
            data = pem.read()
    except OSError as e:
        raise ValueError(f"cannot read {option} {path!r}: {e.strerror}") from None
    blocks = [block + _END_MARKER for block in data.split(_END_MARKER) if b"-----BEGIN" in block]
    if not blocks:
        raise ValueError(f"{option} {path!r} holds no PEM certificate")
    from OpenSSL import crypto

    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except crypto.Error as e:  # a damaged block
        raise ValueError(f"{option} {path!r} holds a certificate that does not load: {e}") from None
    return ssl.trustRootFromCertificates(certificates)


@attrs.frozen(slots=True)
class ClientTLS:
    """How a client checks the servers it connects to over TLS.

    ``trust_root`` None means the system's authorities. ``insecure`` skips
    every check (any certificate, any name): for tests only.
    """

    trust_root: Any = None
    insecure: bool = False

    @classmethod
    def from_options(
        cls, ca_file: str | None = None, *, insecure: bool = False, option: str = "CA file"
    ) -> ClientTLS:
        """The settings of a ``ca_file`` / ``insecure`` pair of options;
        ValueError if both are given or the file is unusable."""
        if insecure and ca_file is not None:
            raise ValueError(f"give either {option} or insecure, not both")
        if insecure:
            return cls(insecure=True)
        return cls(load_trust_root(ca_file, option=option) if ca_file is not None else None)

    def creator(self, host: str) -> Any:
        """The connection creator for a server known as ``host`` (a name or an IP)."""
        if self.insecure:
            log.warn(
                "TLS to {host} WITHOUT verifying the server's certificate (insecure: "
                "for tests only; anyone on the path can read and change the traffic)",
                host=host,
            )
            return ssl.CertificateOptions()
        trust_root = self.trust_root if self.trust_root is not None else ssl.platformTrust()
        return ssl.optionsForClientTLS(host, trustRoot=trust_root)

    def https_policy(self) -> Any:
        """The ``contextFactory`` of a ``twisted.web.client.Agent`` for https://
        URLs: verified against ``trust_root`` (the system's by default), even
        when ``insecure``, which concerns the push servers only."""
        from twisted.web.client import BrowserLikePolicyForHTTPS

        return BrowserLikePolicyForHTTPS(trustRoot=self.trust_root)


def client_endpoint(
    reactor: Any, host: str, port: int, *, tls: ClientTLS | None, timeout: float
) -> IStreamClientEndpoint:
    """TCP to ``host:port``, wrapped in TLS (verified per ``tls``) unless ``tls`` is None."""
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls.creator(host), endpoint)
    return endpoint


def listening_transport(description: str) -> str:
    """``tls`` for a Twisted ``ssl:`` server endpoint string, else ``tcp``: what
    clients of that port must speak."""
    return TLS if description.split(":", 1)[0].strip().lower() == "ssl" else TCP


def describe_failure(failure: Failure) -> str:
    """Why a connection ended, in words that say plainly when TLS refused
    the server (untrusted authority, wrong name) rather than quoting OpenSSL."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    if failure.check(VerificationError):
        return (
            "TLS: the server's certificate is not for the host connected to "
            f"(certificate name mismatch: {failure.getErrorMessage()})"
        )
    if failure.check(SSL.Error):
        text = failure.getErrorMessage()
        if "certificate verify failed" in text:
            return (
                "TLS: the server's certificate is not signed by a trusted authority "
                "(certificate verify failed; check the CA file)"
            )
        return f"TLS handshake failed: {text}"
    return failure.getErrorMessage()
