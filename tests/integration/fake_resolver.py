"""`portguard` with a resolver the test steers through files (never the network's DNS).

    python fake_resolver.py DIR run --config CFG

DIR/hosts.json maps host names to address lists. While DIR/hold exists, every resolution
waits (a slow DNS answer); while DIR/down exists, it fails as a DNS outage does (EAI_AGAIN).
Each resolution appends "pid name" to DIR/calls.log.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import portguard.io.policyfiles
from portguard.cli.main import main

HOLD_LIMIT = 120.0  # seconds: a test that forgot the hold file does not hang the daemon forever


def fake_resolve(directory: Path, name: str) -> tuple[str, ...]:
    with (directory / "calls.log").open("a") as calls:
        calls.write(f"{os.getpid()} {name}\n")
    deadline = time.monotonic() + HOLD_LIMIT
    while (directory / "hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if (directory / "down").exists():
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    hosts = json.loads((directory / "hosts.json").read_text())
    if name not in hosts:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return tuple(hosts[name])


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    setattr(portguard.io.policyfiles, "resolve_host", lambda name: fake_resolve(folder, name))  # noqa: B010
    sys.exit(main(sys.argv[2:]))
