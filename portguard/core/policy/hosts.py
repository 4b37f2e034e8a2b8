"""Host names in sets (``hosts = ["smtp.example.net"]``): their syntax and their resolution.

The compiler takes a resolver as an argument (pure core, tests pass a dict) and a test of
which failures are transient; io/policyfiles.py passes io/dns.py's ``resolve_host`` (the
system resolver) and ``is_transient``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

Resolver = Callable[[str], Sequence[str]]  # name -> addresses; raises OSError when it cannot
Transient = Callable[[OSError], bool]  # a failure worth riding out with the addresses in force

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


def host_name_problem(name: str) -> str | None:
    """Why ``name`` is not a host name to resolve; None when it is one."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return f"\"{name}\" is an address: write addresses in 'cidrs'"
    if len(name) > 253 or not HOST_NAME.match(name) or name.replace(".", "").isdigit():
        return f'"{name}" is not a host name'
    return None


def resolve_problem(error: OSError) -> str:
    """The resolver's reason in a few words: "Name or service not known"."""
    return error.strerror or str(error) or type(error).__name__


def always_transient(error: OSError) -> bool:
    """The compiler's default: any failure keeps the addresses in force."""
    return True
