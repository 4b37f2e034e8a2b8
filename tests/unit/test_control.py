"""The control socket over real unix sockets: requests, answers later, bad input, stale files."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from portguard.service.control import ControlServer, parse_request, request
from portguard.service.policyload import Reply


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


def test_at_the_cap_the_oldest_idle_client_makes_room(loop: Loop) -> None:
    from portguard.service.control import MAX_CLIENTS

    idle = [socket.socket(socket.AF_UNIX) for _ in range(MAX_CLIENTS + 4)]
    try:
        for sock in idle:
            sock.connect(str(loop.server.path))
        assert request(loop.server.path, "ping", timeout=5)["ok"]  # never locked out
        for sock in idle[:4]:  # the oldest were closed for the newer ones
            sock.settimeout(5)
            assert sock.recv(1) == b""
        assert loop.server.stats.evicted >= 5
    finally:
        for sock in idle:
            sock.close()


class Manual:
    """A ControlServer driven by hand: `pump` runs one select round, `sweep` takes a clock."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.server = ControlServer(path, lambda req, reply: reply({"ok": True}),
                                    on_problem=lambda *p: problems.append(p))  # fmt: skip
        self.selector = selectors.DefaultSelector()
        self.server.register(self.selector)

    def pump(self) -> None:
        for key, _ in self.selector.select(timeout=0.2):
            key.data()

    def listening(self) -> bool:
        return any(k.fd == self.server.sock.fileno() for k in self.selector.get_map().values())


@pytest.fixture
def problems() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def manual(tmp_path: Path, problems: list[tuple[str, str]]) -> Iterator[Manual]:
    driven = Manual(tmp_path / "control.sock", problems)
    yield driven
    driven.server.close()


def test_a_client_without_a_request_line_is_closed_after_the_idle_timeout(manual: Manual) -> None:
    from portguard.service.control import IDLE_TIMEOUT

    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(str(manual.server.path))
        idle.sendall(b'{"command": ')
        manual.pump()
        manual.pump()
        manual.server.sweep(time.monotonic() + IDLE_TIMEOUT / 2)
        idle.settimeout(0.1)
        with pytest.raises(TimeoutError):
            idle.recv(1)  # still open
        manual.server.sweep(time.monotonic() + IDLE_TIMEOUT + 0.1)
        idle.settimeout(5)
        assert idle.recv(1) == b""
    assert manual.server.stats.idle_closed == 1


class FailingListener:
    """Stands in for the listening socket: accept fails with `code`."""

    def __init__(self, real: socket.socket, code: int) -> None:
        self.real, self.code = real, code

    def accept(self) -> tuple[socket.socket, Any]:
        raise OSError(self.code, os.strerror(self.code))

    def fileno(self) -> int:
        return self.real.fileno()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS])
def test_out_of_descriptors_pauses_the_listener_and_says_so_once(
    manual: Manual, problems: list[tuple[str, str]], code: int
) -> None:
    from portguard.service.control import ACCEPT_PAUSE

    real = manual.server.sock
    manual.server.sock = FailingListener(real, code)  # type: ignore[assignment]
    try:
        for _ in range(3):
            manual.server._accept()
            manual.server.sweep(time.monotonic() + ACCEPT_PAUSE + 0.1)  # listens again
        manual.server._accept()
        assert not manual.listening()  # resting, not spinning on a readable socket
        assert manual.server.stats.accept_errors == 4
        assert [action for action, _ in problems] == ["control-accept-error"]
        manual.server.sweep(time.monotonic() + ACCEPT_PAUSE + 0.1)
        assert manual.listening()
    finally:
        manual.server.sock = real


def test_an_aborted_connection_does_not_pause_the_listener(manual: Manual) -> None:
    real = manual.server.sock
    manual.server.sock = FailingListener(real, errno.ECONNABORTED)  # type: ignore[assignment]
    try:
        manual.server._accept()
        assert manual.listening() and manual.server.stats.accept_errors == 1
    finally:
        manual.server.sock = real


def test_large_answers_use_a_bounded_number_of_threads() -> None:
    from portguard.service.control import MAX_REPLY_THREADS, ControlStats, _replier, _reply_threads

    stats = ControlStats()
    taken = [_reply_threads.acquire(blocking=False) for _ in range(MAX_REPLY_THREADS)]
    server, client = socket.socketpair()
    try:
        server.setblocking(False)
        _replier(server, stats)({"rules": ["x" * 100] * 100_000})
        assert stats.replies_dropped == 1
        client.settimeout(5)
        while client.recv(1 << 20):  # what fitted, then the end: the connection was closed
            pass
    finally:
        for held in taken:
            if held:
                _reply_threads.release()
        client.close()


def test_a_large_answer_to_a_client_that_does_not_read_never_blocks(tmp_path: Path) -> None:
    from portguard.service.control import ControlStats, _replier

    server, client = socket.socketpair()
    server.setblocking(False)
    answer = {"rules": ["x" * 100] * 100_000}  # ~10 MB: far beyond the socket buffer
    started = time.monotonic()
    _replier(server, ControlStats())(answer)
    assert time.monotonic() - started < 0.5  # the rest goes from a thread
    received = b""
    while not received.endswith(b"\n"):
        received += client.recv(1 << 20)
    assert orjson.loads(received) == answer
    client.close()
