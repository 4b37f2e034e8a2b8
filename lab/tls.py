"""A throwaway self-signed certificate for the lab's SMTP servers (made with the openssl CLI)."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUBJECT = "/CN=mail.lab.portguard.test"


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


def make_self_signed(directory: Path, days: int = 2) -> CertPair:
    """Write an EC P-256 key and a self-signed certificate into `directory`."""
    pair = CertPair(directory / "lab-cert.pem", directory / "lab-key.pem")
    argv = [
        "openssl", "req", "-x509", "-nodes", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(pair.key), "-out", str(pair.cert),
        "-days", str(days), "-subj", SUBJECT,
        "-addext", "subjectAltName=DNS:mail.lab.portguard.test",
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    pair.key.chmod(0o600)
    return pair


def server_context(pair: CertPair) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def client_context() -> ssl.SSLContext:
    """TLS without verification: the lab's certificate is self-signed on purpose."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
