"""The lab collector's reading of rsyslog's output, cut lines included."""

from __future__ import annotations

import json

from lab.collector import _message

WHOLE = {"msg": '{"event": {"sequence": 7}}', "input": "tcp", "nested": {"a": 1}}


def test_a_whole_line_is_one_message() -> None:
    assert _message(json.dumps(WHOLE).encode()) == WHOLE


def test_the_message_after_the_part_a_killed_collector_wrote_is_kept() -> None:
    part = json.dumps({"msg": "cut", "input": "tcp"}).encode()[:20]
    assert _message(part + json.dumps(WHOLE).encode()) == WHOLE


def test_a_line_with_nothing_whole_is_none() -> None:
    assert _message(b'{"msg": "cut') is None
    assert _message(b"garbage") is None
