"""The lightest syslog collector there is, for the benchmark: it counts the frames it receives.

    with StreamCollector(workdir, ["ip", "netns", "exec", ns], 6514, b"decision") as c:
        ...                  # send octet-counted syslog to tcp://127.0.0.1:6514
        c.count()            # the complete messages received so far
        c.marked()           # how often b"decision" occurs in them

rsyslog parses each message and writes it as JSON (lab/collector.py): on the benchmark's two
cores, at 180,000 events/s, it competes with the daemon for the CPU it measures. A SIEM's
collector runs on its own machine; this one stands in for it by doing the least a receiver
must: read the socket and count the complete frames (RFC 6587 octet counting: MSG-LEN SP
MSG) and how often a marker occurs in them. It keeps no bytes: writing 150 MB/s into a file
would cost this machine's shared cores what the collector is here to leave to the daemon.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from lab.peers import python_env

CHUNK = 1 << 20


def serve(address: str, port: int, marker: bytes, status: Path) -> None:
    """Accept connections; count the complete frames each sends and how often `marker`
    occurs in them, and rewrite both counts to `status` every 0.1 s. The bytes are not kept."""
    server = socket.create_server((address, port), backlog=16)
    lock = threading.Lock()
    counts = [0, 0]  # frames, the marker in them

    def receive(conn: socket.socket) -> None:
        tail = b""
        with conn:
            while chunk := conn.recv(CHUNK):
                data = tail + chunk
                count, used = frames(data)
                marked = data.count(marker, 0, used)
                with lock:
                    counts[0] += count
                    counts[1] += marked
                tail = data[used:]

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=receive, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print("READY", flush=True)
    while True:
        with lock:
            text = f"{counts[0]} {counts[1]}\n"
        status.with_suffix(".tmp").write_text(text)
        status.with_suffix(".tmp").replace(status)
        time.sleep(0.1)


def frames(data: bytes) -> tuple[int, int]:
    """The complete octet-counted frames at the start of `data`: (how many, bytes they take)."""
    count = at = 0
    while True:
        space = data.find(b" ", at, at + 12)
        if space < 0:
            return count, at
        end = space + 1 + int(data[at:space])
        if end > len(data):
            return count, at
        count, at = count + 1, end


class StreamCollector:
    """`serve` in a namespace (`argv_prefix`), its counts in `workdir`/stream.count."""

    def __init__(self, workdir: Path, argv_prefix: Sequence[str], port: int, marker: bytes,
                 address: str = "127.0.0.1") -> None:  # fmt: skip
        self.status = workdir / "stream.count"
        self.argv = [*argv_prefix, sys.executable, "-m", "lab.streamcollector", address,
                     str(port), marker.decode(), str(self.status)]  # fmt: skip
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True,
                                     env=python_env())  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            self.stop()
            raise RuntimeError("the stream collector did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def count(self) -> int:
        """Messages received so far (as of at most 0.1 s ago)."""
        return self._counts()[0]

    def marked(self) -> int:
        """How often the marker occurs in the messages received so far (once a decision
        event for the benchmark's marker)."""
        return self._counts()[1]

    def _counts(self) -> tuple[int, int]:
        try:
            frames, marked = map(int, self.status.read_text().split())
        except (OSError, ValueError):
            return 0, 0
        return frames, marked

    def __enter__(self) -> StreamCollector:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()


if __name__ == "__main__":
    os.umask(0o022)
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), Path(sys.argv[4]))
