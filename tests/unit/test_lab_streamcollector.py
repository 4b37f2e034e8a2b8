"""The stream collector's frame reading (RFC 6587 octet counting), cut frames included."""

from __future__ import annotations

import pytest

from lab.streamcollector import frames


def framed(*messages: bytes) -> bytes:
    return b"".join(b"%d %s" % (len(m), m) for m in messages)


def test_whole_frames_are_counted_and_their_bytes_taken() -> None:
    data = framed(b"<134>1 - a", b"", b"<134>1 - with spaces and 10 digits 0123456789")
    assert frames(data) == (3, len(data))


@pytest.mark.parametrize("cut", range(1, 40))
def test_a_cut_frame_is_left_for_the_next_read(cut: int) -> None:
    first, second = framed(b"<134>1 - first"), framed(b"<134>1 - second message")
    data = (first + second)[: len(first) + cut]
    count, used = frames(data)
    whole = cut >= len(second)
    assert (count, used) == ((2, len(first + second)) if whole else (1, len(first)))


def test_nothing_whole_is_nothing() -> None:
    assert frames(b"") == (0, 0)
    assert frames(b"123") == (0, 0)
    assert frames(b"12 <134>") == (0, 0)
