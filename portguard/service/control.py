"""The control socket: `portguard reload` and `portguard status` talk to the running daemon.

A unix stream socket; one JSON request line in, one JSON answer line out. The server side
lives in the daemon's select loop and never blocks it: connections are non-blocking, their
bytes are buffered until a full line arrives, and an answer may come later (a reload answers
when the new policy has been built aside and swapped in, or refused).

Nobody who can connect can lock it: a client that has not sent its request line within
IDLE_TIMEOUT is closed, and when MAX_CLIENTS are waiting the oldest is closed to make room for
the newest (so `portguard status` always gets in). An accept that fails for want of
descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is counted, reported once, and pauses
the listener for ACCEPT_PAUSE instead of spinning on a readable socket; answers that do not fit
the socket buffer are finished by at most MAX_REPLY_THREADS threads.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

MAX_REQUEST = 4096  # bytes; a longer line is refused
MAX_CLIENTS = 16  # connections waiting for their request line; more close the oldest
LISTEN_BACKLOG = 64  # connections the kernel holds until the loop accepts them
ACCEPTS_PER_ROUND = 32  # connections accepted per wake-up (then the packets get their turn)
IDLE_TIMEOUT = 5.0  # seconds a connection may take to send its request line
ACCEPT_PAUSE = 1.0  # seconds the listener rests after running out of descriptors or memory
MAX_REPLY_THREADS = 8  # large answers being finished at once; beyond, the answer is dropped
SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
SOCKET_GROUP = "portguard"  # members may use the socket (mode 0660), when the group exists
Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Reply], None]
Problem = Callable[[str, str], None]  # (event action, message): reported once per kind
_reply_threads = threading.BoundedSemaphore(MAX_REPLY_THREADS)


@dataclass
class ControlStats:
    """What the control socket met (in `status`): closed idle clients, accept failures."""

    idle_closed: int = 0  # no request line within IDLE_TIMEOUT
    evicted: int = 0  # the oldest waiting client, closed to make room for a new one
    accept_errors: int = 0
    replies_dropped: int = 0  # a large answer with no reply thread free
    reported: set[str] = field(default_factory=set)

    def fields(self) -> dict[str, int]:
        names = ("idle_closed", "evicted", "accept_errors", "replies_dropped")
        return {name: getattr(self, name) for name in names}


@dataclass
class _Client:
    since: float  # monotonic time of the connection
    data: bytes = b""


def parse_request(line: bytes) -> dict[str, Any]:
    """A request object with a string `command`, or a ValueError saying what is wrong."""
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise ValueError('a request is a JSON object with a "command" string')
    return request


class ControlServer:
    """Accepts control connections on `path` and hands complete requests to `handler`."""

    def __init__(
        self, path: Path, handler: Handler, mode: int = 0o660, on_problem: Problem | None = None
    ) -> None:
        self.path = path
        self.handler = handler
        self.on_problem = on_problem
        self.stats = ControlStats()
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, mode)
        _give_to_group(path, SOCKET_GROUP)
        self.sock.listen(LISTEN_BACKLOG)
        self.sock.setblocking(False)
        self._selector: selectors.BaseSelector | None = None
        self._clients: dict[socket.socket, _Client] = {}  # oldest first
        self._paused_until: float | None = None  # the listener rests after a shortage

    def register(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for conn in list(self._clients):
            self._drop(conn)
        self._unlisten()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def sweep(self, now: float | None = None) -> None:
        """Close clients idle for IDLE_TIMEOUT; listen again after a pause. Call it from the
        loop at least every second."""
        now = time.monotonic() if now is None else now
        for conn, client in list(self._clients.items()):
            if now - client.since < IDLE_TIMEOUT:
                break  # oldest first: the rest are younger
            self.stats.idle_closed += 1
            self._drop(conn)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            if self._selector is not None:
                self._selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        now = time.monotonic()
        self.sweep(now)
        for _ in range(ACCEPTS_PER_ROUND):
            if not self._accept_one(now):
                return

    def _accept_one(self, now: float) -> bool:
        """Accept one waiting connection; False when none is left (or accepting failed)."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        except OSError as error:
            self._accept_failed(error, now)
            return False
        if len(self._clients) >= MAX_CLIENTS:  # the oldest waiting client makes room
            self.stats.evicted += 1
            self._drop(next(iter(self._clients)))
        conn.setblocking(False)
        self._clients[conn] = _Client(now)
        assert self._selector is not None
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._read(conn))
        return True

    def _accept_failed(self, error: OSError, now: float) -> None:
        """Count it, say it once; on a shortage free the oldest client and rest a moment."""
        self.stats.accept_errors += 1
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        if name not in self.stats.reported and self.on_problem is not None:
            self.stats.reported.add(name)
            message = f"accepting a control connection failed: {error}"
            self.on_problem("control-accept-error", f"{message}; the listener pauses and retries")
        if error.errno not in SHORTAGE:
            return  # ECONNABORTED, EPROTO: that one client is gone, the next is fine
        if self._clients:
            self.stats.evicted += 1
            self._drop(next(iter(self._clients)))
        self._unlisten()
        self._paused_until = now + ACCEPT_PAUSE

    def _unlisten(self) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.sock)

    def _read(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        client = self._clients.get(conn)
        if client is None:
            return
        data = client.data + chunk
        if not chunk or len(data) > MAX_REQUEST:
            self._drop(conn)
            return
        if b"\n" not in data:
            client.data = data
            return
        assert self._selector is not None
        self._selector.unregister(conn)
        self._clients.pop(conn, None)
        self._dispatch(conn, data.split(b"\n", 1)[0])

    def _dispatch(self, conn: socket.socket, line: bytes) -> None:
        reply = _replier(conn, self.stats)
        try:
            request = parse_request(line)
        except ValueError as error:
            reply({"ok": False, "errors": [str(error)]})
            return
        try:
            self.handler(request, reply)
        except Exception as error:  # one failing request must not take the daemon's loop down
            reply({"ok": False, "errors": [f"{request['command']} failed: {error!r}"]})

    def _drop(self, conn: socket.socket) -> None:
        self._clients.pop(conn, None)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn)
        conn.close()


def _remove_stale(path: Path) -> None:
    """Remove the socket a crashed run left; refuse when a live daemon still answers on it."""
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise OSError(f"another daemon listens on the control socket {path}")


def _give_to_group(path: Path, group: str) -> None:
    """Make `group` the socket's group when that group exists and this process may (root, or
    a member of it); otherwise the socket keeps the process's group."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    with contextlib.suppress(PermissionError):
        os.chown(path, -1, gid)


def _replier(conn: socket.socket, stats: ControlStats) -> Reply:
    def reply(answer: dict[str, Any]) -> None:
        data = orjson.dumps(answer) + b"\n"
        try:
            sent = conn.send(data)  # non-blocking: most answers fit the socket buffer at once
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = len(data)  # the client is gone: nothing more to send
        if sent >= len(data):
            conn.close()
            return
        # a large answer (a status of many rules): the rest from a thread, so a client that
        # does not read never holds up the packet loop; a bounded number of them
        if not _reply_threads.acquire(blocking=False):
            stats.replies_dropped += 1
            conn.close()
            return
        threading.Thread(target=_finish_reply, args=(conn, data[sent:]), daemon=True).start()

    return reply


def _finish_reply(conn: socket.socket, rest: bytes) -> None:
    try:
        conn.setblocking(True)
        conn.settimeout(5.0)  # a client that does not read loses its answer
        conn.sendall(rest)
    except OSError:
        pass
    finally:
        conn.close()
        _reply_threads.release()


def request(path: Path, command: str, timeout: float = 120.0, **fields: Any) -> dict[str, Any]:
    """Send one request to the daemon's control socket and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, path, time.monotonic() + timeout)
        sock.sendall(orjson.dumps({"command": command, **fields}) + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = orjson.loads(data) if data else {"ok": False, "errors": ["no answer"]}
    if not isinstance(answer, dict):
        raise ValueError("the daemon's answer is not a JSON object")
    return answer


def _connect(sock: socket.socket, path: Path, deadline: float) -> None:
    """Connect, waiting while the listener's backlog is full (a unix socket with a timeout
    answers EAGAIN at once instead of waiting): a burst of other clients is no refusal."""
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the control socket {path} stayed busy") from None
            time.sleep(0.02)
