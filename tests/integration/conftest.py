"""Integration tests need root: they build network namespaces and bind real kernel queues."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)
        if os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root: run `sudo make test`"))
