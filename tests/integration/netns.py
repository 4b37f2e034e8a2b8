"""Throwaway network namespaces for integration tests (a helper module, not a conftest).

Each namespace has a unique ``pgt-`` name and its loopback up, and is always deleted together with
the processes left in it (lab.netns does the work). ``Netns.runner`` plugs the
namespace into the hook backends. Test modules import ``netns_fixture`` to get the ``netns``
fixture.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from lab import netns as lab
from portguard.io.hooks.runner import CommandResult, run_command


@dataclass(frozen=True)
class Netns:
    name: str
    path: str | None = None  # PATH for the commands run in it (to pick iptables-legacy, say)

    def argv(self, argv: Sequence[str]) -> list[str]:
        env = ["env", f"PATH={self.path}"] if self.path else []
        return lab.exec_argv(self.name, [*env, *argv])

    def run(self, *argv: str, stdin: str | None = None) -> str:
        """Run a command in the namespace; its stdout. CalledProcessError when it fails."""
        return subprocess.run(
            self.argv(argv), input=stdin, capture_output=True, text=True, check=True, timeout=30
        ).stdout

    def runner(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        """A hook backend ``Runner`` acting inside this namespace."""
        return run_command(self.argv(argv), stdin)

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        """Start a command in the namespace with stdin and stdout as pipes."""
        pipe = subprocess.PIPE
        return subprocess.Popen(self.argv(argv), stdin=pipe, stdout=pipe, text=True)


@contextmanager
def throwaway_netns() -> Iterator[Netns]:
    name = f"pgt-{secrets.token_hex(4)}"
    lab.add(name)
    try:
        lab.batch(name, ["link set lo up"])
        yield Netns(name)
    finally:
        lab.delete(name)


def link(a: Netns, b: Netns, a_cidr: str, b_cidr: str) -> None:
    """A veth pair between two namespaces (created inside ``a``), addressed and up."""
    ifa, ifb = f"pg{secrets.token_hex(3)}", f"pg{secrets.token_hex(3)}"
    lab.batch(a.name, [f"link add {ifa} type veth peer name {ifb} netns {b.name}"])
    lab.batch(a.name, [f"addr add {a_cidr} dev {ifa}", f"link set {ifa} up"])
    lab.batch(b.name, [f"addr add {b_cidr} dev {ifb}", f"link set {ifb} up"])


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


@pytest.fixture(name="netns")
def netns_fixture() -> Iterator[Netns]:
    """A fresh, empty network namespace, deleted after the test."""
    require_root()
    with throwaway_netns() as ns:
        yield ns
