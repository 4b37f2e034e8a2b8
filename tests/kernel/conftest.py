"""The kernel suite runs only inside the kernel lane's VM (`sudo make test-kernel`).

tests/kernel/vm.sh boots the distribution's stock kernel and runs these tests there with
PORTGUARD_KERNEL_VM=1. Anywhere else (`make test` on the host) they are not even collected: the
host's kernel may lack what they test (the development machines have no nft `queue`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab

IN_VM = os.environ.get("PORTGUARD_KERNEL_VM") == "1"
if not IN_VM:
    collect_ignore_glob = ["test_*.py"]
# the host suite's helpers (setpriv, unveil) are reused by test_kernel_unprivileged
sys.path.append(str(Path(__file__).resolve().parents[1] / "integration"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """One namespace lab with its SMTP servers for the whole suite: under TCG a lab costs
    seconds to build. Every test leaves the gateway as it found it."""
    with Lab() as built:
        built.start_smtp_servers(timeout=120)
        yield built
