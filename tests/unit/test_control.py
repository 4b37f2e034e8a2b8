"""The control socket over real unix sockets: requests, answers later, bad input, stale files."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from portguard.control import ControlServer, parse_request, request
from portguard.policyload import Reply


class Loop:
    """A select loop in a thread, like the daemon's, serving one ControlServer."""

    def __init__(self, path: Path) -> None:
        self.later: list[Reply] = []
        self.server = ControlServer(path, self.handle)
        self.selector = selectors.DefaultSelector()
        self.server.register(self.selector)
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def handle(self, req: dict[str, Any], reply: Reply) -> None:
        if req["command"] == "later":
            self.later.append(reply)  # answered by the test, as a reload is by the loader
        else:
            reply({"ok": True, "echo": req})

    def run(self) -> None:
        while self.running:
            for key, _ in self.selector.select(timeout=0.05):
                key.data()

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    running = Loop(tmp_path / "run" / "control.sock")
    yield running
    running.stop()


def test_request_and_answer(loop: Loop) -> None:
    answer = request(loop.server.path, "ping", value=3)
    assert answer == {"ok": True, "echo": {"command": "ping", "value": 3}}
    assert oct(loop.server.path.stat().st_mode & 0o777) == "0o660"


def test_an_answer_can_come_later(loop: Loop) -> None:
    answers: list[dict[str, Any]] = []
    client = threading.Thread(target=lambda: answers.append(request(loop.server.path, "later")))
    client.start()
    while not loop.later:
        threading.Event().wait(0.01)
    assert answers == []
    loop.later[0]({"ok": False, "errors": ["a:1: b"]})
    client.join(5)
    assert answers == [{"ok": False, "errors": ["a:1: b"]}]


def test_bad_requests_get_an_error(loop: Loop) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(loop.server.path))
        sock.sendall(b"not json\n")
        assert b'"ok":false' in sock.recv(4096)
    with pytest.raises(ValueError):
        parse_request(b'{"no": "command"}')


def test_a_slow_client_never_blocks_the_loop(loop: Loop) -> None:
    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(str(loop.server.path))
        idle.sendall(b'{"command": ')  # and never finishes the line
        assert request(loop.server.path, "ping")["ok"]


def test_stale_socket_is_replaced_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed run
    first = ControlServer(path, lambda req, reply: reply({"ok": True}))
    with pytest.raises(OSError, match="another daemon"):
        ControlServer(path, lambda req, reply: reply({"ok": True}))
    first.close()
    assert not path.exists()


def test_idle_clients_are_capped(loop: Loop) -> None:
    from portguard.control import MAX_CLIENTS

    idle = [socket.socket(socket.AF_UNIX) for _ in range(MAX_CLIENTS + 4)]
    try:
        for sock in idle:
            sock.connect(str(loop.server.path))
        threading.Event().wait(0.3)
        assert len(loop.server._buffers) == MAX_CLIENTS
    finally:
        for sock in idle:
            sock.close()


def test_a_large_answer_to_a_client_that_does_not_read_never_blocks(tmp_path: Path) -> None:
    from portguard.control import _replier

    server, client = socket.socketpair()
    server.setblocking(False)
    answer = {"rules": ["x" * 100] * 100_000}  # ~10 MB: far beyond the socket buffer
    started = time.monotonic()
    _replier(server)(answer)
    assert time.monotonic() - started < 0.5  # the rest goes from a thread
    received = b""
    while not received.endswith(b"\n"):
        received += client.recv(1 << 20)
    assert orjson.loads(received) == answer
    client.close()
