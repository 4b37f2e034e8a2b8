"""The stream collector (lab/streamcollector.py) in a lab namespace: two connections at once,
their frames cut at random places, every frame counted, and those with the marker."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.peers import python_env
from lab.streamcollector import StreamCollector
from lab.topology import Lab

pytestmark = pytest.mark.integration

PORT = 5515
MESSAGES = 2000
SENDER = """
import random, socket, sys
tag, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = b"".join(b"%d %s" % (len(m), m) for m in
                (b"<134>1 - %s %d %s" % (tag.encode(), i, b"x" * (i % 300)) for i in range(count)))
rng = random.Random(tag)
with socket.create_connection(("127.0.0.1", port)) as conn:
    at = 0
    while at < len(data):
        step = rng.randint(1, 5000)
        conn.sendall(data[at:at + step])
        at += step
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as built:
        yield built


def test_two_connections_every_frame_counted_and_the_marked_ones(lab: Lab) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="stream-", dir=lab.workdir))
    with StreamCollector(workdir, lab.argv("gw", []), PORT, b"- a ") as collector:
        senders = [lab.popen("gw", [sys.executable, "-c", SENDER, tag, str(PORT), str(MESSAGES)],
                             env=python_env()) for tag in ("a", "b")]  # fmt: skip
        assert [sender.wait(60) for sender in senders] == [0, 0]
        deadline = time.monotonic() + 30  # liveness only: the counts are what is asserted
        while collector.count() < 2 * MESSAGES and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # a count beyond the frames sent would show by now
        assert (collector.count(), collector.marked()) == (2 * MESSAGES, MESSAGES)
