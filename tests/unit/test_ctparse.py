"""DESTROY messages read by the C library (`DestroyParser`) exactly as `parse_destroy` reads
them: the recorded messages of test_ctevents_parse, every truncation of them, and random
mutations (never a different flow; see `agree`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portguard.core.events.flowend import EndedFlow
from portguard.io import ctparse
from portguard.io.ctparse import DestroyParser, parse_destroy
from tests.unit.test_ctevents_parse import (
    V4_ALLOW_OUTBOUND,
    V4_ALLOW_RESET,
    V4_UDP_ALLOW,
    V4_UNMARKED,
    V6_ALLOW_INBOUND,
    V6_ALLOW_NO_ACCOUNTING,
    V6_REJECT,
)

RECORDED = [V4_ALLOW_OUTBOUND, V4_ALLOW_RESET, V4_UDP_ALLOW, V4_UNMARKED, V6_ALLOW_INBOUND,
            V6_ALLOW_NO_ACCOUNTING, V6_REJECT]  # fmt: skip
FAST = DestroyParser()


def both(message: bytes) -> tuple[object, object]:
    """Each parser's flow, None, or the exception's type name."""
    results: list[object] = []
    for parse in (parse_destroy, FAST):
        try:
            results.append(parse(message))
        except (ValueError, KeyError, IndexError) as error:
            results.append(type(error).__name__)
    return results[0], results[1]


def test_the_library_reads_destroy_messages() -> None:
    assert FAST._lib is not None, "pip install builds portguard/io/_nfqbatch.so (hatch_build.py)"


@pytest.mark.parametrize("message", RECORDED)
def test_recorded_messages_give_the_same_flow(message: bytes) -> None:
    slow, fast = both(message)
    assert fast == slow
    if message in (V4_ALLOW_OUTBOUND, V6_ALLOW_INBOUND, V6_ALLOW_NO_ACCOUNTING):
        assert isinstance(fast, EndedFlow)


def agree(slow: object, fast: object) -> bool:
    """The same flow or None; or both failed (not necessarily with the same exception); or the
    C parser refused what Python read as a flow (it is stricter: a number attribute wider than
    64 bits is malformed to it, a huge number to Python). Never a different flow."""
    if isinstance(fast, str):
        return isinstance(slow, (str, EndedFlow))
    return slow == fast


@pytest.mark.parametrize("message", RECORDED)
def test_every_truncation_agrees(message: bytes) -> None:
    for cut in range(len(message)):
        slow, fast = both(message[:cut])
        assert agree(slow, fast), (cut, slow, fast)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(RECORDED), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                           min_size=1, max_size=4))  # fmt: skip
def test_mutated_messages_agree(message: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(message)
    for at, value in flips:
        data[at % len(data)] = value
    slow, fast = both(bytes(data))
    assert agree(slow, fast), (bytes(data).hex(), slow, fast)


def test_without_the_library_it_is_parse_destroy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctparse, "library", lambda: None)
    plain = DestroyParser()
    assert plain(V4_ALLOW_OUTBOUND) == parse_destroy(V4_ALLOW_OUTBOUND)
