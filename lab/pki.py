"""A throwaway certificate authority for tests: a CA and the leaf certificates it issues.

Made with the openssl CLI (EC P-256, valid for two days), so tests can check real certificate
verification: a syslog collector's server certificate, a client certificate for mutual TLS,
and a second, unrelated CA to play the wrong trust anchor.

    ca = make_ca(directory, "portguard test CA")
    server = issue(ca, directory, "collector.test", ips=["127.0.0.1"])
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.tls import CertPair

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
LEAF_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA: its certificate (what a peer trusts) and key (what issues leaves)."""

    name: str
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def make_ca(directory: Path, name: str = "portguard test CA", days: int = 2) -> Authority:
    """A self-signed CA certificate and key in `directory`, named after `name`."""
    stem = directory / _slug(name)
    ca = Authority(name, stem.with_suffix(".pem"), stem.with_name(f"{stem.name}-key.pem"))
    _openssl(
        "req", "-x509", *EC_KEY, "-keyout", str(ca.key), "-out", str(ca.cert),
        "-days", str(days), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    ca.key.chmod(0o600)
    return ca


def issue(
    ca: Authority,
    directory: Path,
    name: str,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 2,
) -> CertPair:
    """A leaf certificate for `name` (CN and DNS SAN, plus `dns` and `ips` SANs), signed by
    `ca`, usable by a server and by a client."""
    stem = directory / _slug(name)
    pair = CertPair(stem.with_suffix(".pem"), stem.with_name(f"{stem.name}-key.pem"))
    request, extensions = stem.with_suffix(".csr"), stem.with_suffix(".ext")
    names = [f"DNS:{n}" for n in (name, *dns)] + [f"IP:{ip}" for ip in ips]
    extensions.write_text(f"{LEAF_EXTENSIONS}subjectAltName={','.join(names)}\n")
    _openssl("req", "-new", *EC_KEY, "-keyout", str(pair.key), "-out", str(request),
             "-subj", f"/CN={name}")  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", str(days), "-extfile", str(extensions), "-out", str(pair.cert),
    )  # fmt: skip
    pair.key.chmod(0o600)
    return pair
