"""Thin wrappers around `ip netns` and `ip -batch`: create, configure and remove namespaces.

Only namespaces whose names the caller passes are touched; nothing here lists or removes
namespaces by pattern, so labs of parallel test runs never interfere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class LabError(RuntimeError):
    """Building, using or removing the lab failed."""


def ip(args: Sequence[str], *, stdin: str | None = None) -> str:
    """Run `ip ARGS`; raise LabError with ip's message on failure."""
    proc = subprocess.run(
        ["ip", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        where = f"ip {' '.join(args)}"
        raise LabError(f"{where} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def batch(namespace: str, commands: Iterable[str]) -> None:
    """Run several `ip` commands inside `namespace` in one `ip -batch` call."""
    text = "".join(f"{command}\n" for command in commands)
    if text:
        ip(["-n", namespace, "-batch", "-"], stdin=text)


def exists(namespace: str) -> bool:
    return (NETNS_DIR / namespace).exists()


def add(namespace: str) -> None:
    ip(["netns", "add", namespace])


def exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def sysctl(namespace: str, settings: dict[str, str]) -> None:
    pairs = [f"{key}={value}" for key, value in settings.items()]
    proc = subprocess.run(
        exec_argv(namespace, ["sysctl", "-q", "-w", *pairs]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"sysctl in {namespace} failed: {proc.stderr.strip()}")


def pids(namespace: str) -> list[int]:
    """Processes living in `namespace` (all of them were started by this lab)."""
    proc = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30, check=False
    )
    return [int(word) for word in proc.stdout.split() if word.isdigit()]


def kill_all(namespace: str, grace: float = 2.0) -> None:
    """SIGTERM every process left in the namespace, SIGKILL the ones still there after `grace`."""
    deadline = time.monotonic() + grace
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        while pids(namespace) and time.monotonic() < deadline:
            time.sleep(0.05)
        deadline = time.monotonic() + grace


def delete(namespace: str) -> None:
    """Remove a namespace this lab created: its processes first, then the name."""
    if not exists(namespace):
        return
    kill_all(namespace)
    ip(["netns", "delete", namespace])
