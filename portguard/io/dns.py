"""Resolving the host names of rule-file sets (``hosts = [...]``) through the system resolver.

The compiler (core/policy/compiler.py) gets ``resolve_host`` and ``is_transient`` as arguments.
"""

from __future__ import annotations

import socket


def resolve_host(name: str) -> tuple[str, ...]:
    """Every IPv4 and IPv6 address of ``name`` (getaddrinfo), each once, in resolver order."""
    infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    addresses = (str(info[4][0]).partition("%")[0] for info in infos)
    return tuple(dict.fromkeys(addresses))


DEFINITE = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


def is_transient(error: OSError) -> bool:
    """A failure worth riding out with the addresses in force (timeout, SERVFAIL, no answer);
    not a definite answer that the name does not exist (NXDOMAIN, no address records)."""
    return not (isinstance(error, socket.gaierror) and error.errno in DEFINITE)
