"""Where a syslog output sends (`Target`, from `udp://`, `tcp://` or `tls://host:port`), its
TLS settings and client context, and the reasons an operator reads when a send fails."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SCHEMES = ("udp", "tcp", "tls")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a syslog sink sends: transport, host (IPv6 without brackets), port."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(address: str) -> Target:
    """`udp://host:port`, `tcp://host:port` or `tls://host:port`; ValueError otherwise."""
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in SCHEMES or not parts.hostname or not port:
        raise ValueError(f"syslog address must be udp://, tcp:// or tls://host:port: {address}")
    return Target(parts.scheme, parts.hostname, port)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS for a `tls://` sink: trusted CA bundle (None: the system store), optional client
    certificate and key, and the name to verify (None: the address's host)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """A verifying client context for `tls`; ValueError naming the file that is unusable."""
    if tls.key is not None and tls.cert is None:
        raise ValueError("syslog TLS: a client key needs its certificate (cert)")
    try:
        context = ssl.create_default_context(cafile=None if tls.ca is None else str(tls.ca))
    except OSError as error:
        raise ValueError(f"syslog TLS: CA bundle {tls.ca}: {error}") from error
    if tls.cert is not None:
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except OSError as error:
            raise ValueError(
                f"syslog TLS: client cert {tls.cert}, key {tls.key}: {error}"
            ) from error
    return context


def describe(error: OSError) -> str:
    """A short reason for an operator: the verification error, the TLS alert or the errno."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    return error.strerror or str(error) or type(error).__name__
