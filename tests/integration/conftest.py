"""Integration tests need root: they build network namespaces and bind real kernel queues."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.daemon import LabDaemon, hooks_leftover
from lab.topology import Lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)
        if os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root: run `sudo make test`"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A namespace lab with its SMTP servers, shared by the tests of one module."""
    with Lab() as built:
        built.start_smtp_servers()
        yield built


@pytest.fixture
def daemon(lab: Lab) -> Iterator[LabDaemon]:
    """The real daemon with the shipped rules in the lab's gateway; stopping it must leave
    no hook behind."""
    running = LabDaemon(lab)
    running.start()
    try:
        yield running
    finally:
        running.stop()
    assert not hooks_leftover(lab), "SIGTERM must remove every hook"


@pytest.fixture
def every_deny_daemon(lab: Lab) -> Iterator[LabDaemon]:
    """The shipped rules with flood control off: every decision has its own event."""
    running = LabDaemon(lab, flood_window=0)
    running.start()
    try:
        yield running
    finally:
        running.stop()
