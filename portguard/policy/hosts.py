"""Host names in sets (``hosts = ["smtp.example.net"]``): their syntax and their resolution.

The compiler takes a resolver as an argument (pure core, tests pass a dict); the loader passes
``resolve_host``, which asks the system resolver (getaddrinfo) for IPv4 and IPv6 addresses.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Sequence

Resolver = Callable[[str], Sequence[str]]  # name -> addresses; raises OSError when it cannot

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


def host_name_problem(name: str) -> str | None:
    """Why ``name`` is not a host name to resolve; None when it is one."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, name)
        except (OSError, ValueError):
            continue
        return f"\"{name}\" is an address: write addresses in 'cidrs'"
    if len(name) > 253 or not HOST_NAME.match(name) or name.replace(".", "").isdigit():
        return f'"{name}" is not a host name'
    return None


def resolve_host(name: str) -> tuple[str, ...]:
    """Every IPv4 and IPv6 address of ``name`` (getaddrinfo), each once, in resolver order."""
    infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    addresses = (str(info[4][0]).partition("%")[0] for info in infos)
    return tuple(dict.fromkeys(addresses))


def resolve_problem(error: OSError) -> str:
    """The resolver's reason in a few words: "Name or service not known"."""
    return error.strerror or str(error) or type(error).__name__


DEFINITE = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


def is_transient(error: OSError) -> bool:
    """A failure worth riding out with the addresses in force (timeout, SERVFAIL, no answer);
    not a definite answer that the name does not exist (NXDOMAIN, no address records)."""
    return not (isinstance(error, socket.gaierror) and error.errno in DEFINITE)
