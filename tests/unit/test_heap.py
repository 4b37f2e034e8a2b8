"""portguard/io/heap.py: the collector's thresholds (restored after each test)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from portguard.io.heap import YOUNG, fewer_collections


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_young_collections_are_rarer_and_what_exists_is_frozen() -> None:
    _, middle, old = gc.get_threshold()
    fewer_collections()
    assert gc.get_threshold() == (YOUNG, middle, old)
    assert gc.get_freeze_count() > 0
