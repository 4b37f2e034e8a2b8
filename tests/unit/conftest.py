"""Unit tests must not depend on this host's interface names: `check` warns about a WAN
interface that does not exist, so here every name exists except those starting with
"pgnosuch" (test_interfaces.py tests the real lookup)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from portguard.io import interfaces


def fake_missing(names: Iterable[str], index_of: object = None) -> list[str]:
    return [name for name in names if name.startswith("pgnosuch")]


@pytest.fixture(autouse=True)
def host_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interfaces, "missing_interfaces", fake_missing)
