"""The control socket: `portguard reload` and `portguard status` talk to the running daemon.

A unix stream socket; one JSON request line in, one JSON answer line out. The server side
lives in the daemon's select loop and never blocks it: connections are non-blocking, their
bytes are buffered until a full line arrives, and an answer may come later (a reload answers
when the new policy has been built aside and swapped in, or refused).
"""

from __future__ import annotations

import contextlib
import grp
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

MAX_REQUEST = 4096  # bytes; a longer line is refused
MAX_CLIENTS = 16  # connections waiting for their request line; more are closed at once
SOCKET_GROUP = "portguard"  # members may use the socket (mode 0660), when the group exists
Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Reply], None]


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

    def __init__(self, path: Path, handler: Handler, mode: int = 0o660) -> None:
        self.path = path
        self.handler = handler
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, mode)
        _give_to_group(path, SOCKET_GROUP)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self._selector: selectors.BaseSelector | None = None
        self._buffers: dict[socket.socket, bytes] = {}

    def register(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.sock)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        if len(self._buffers) >= MAX_CLIENTS:
            conn.close()  # idle clients must not eat the daemon's file descriptors
            return
        conn.setblocking(False)
        self._buffers[conn] = b""
        assert self._selector is not None
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._read(conn))

    def _read(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data = self._buffers.get(conn, b"") + chunk
        if not chunk or len(data) > MAX_REQUEST:
            self._drop(conn)
            return
        if b"\n" not in data:
            self._buffers[conn] = data
            return
        assert self._selector is not None
        self._selector.unregister(conn)
        self._buffers.pop(conn, None)
        self._dispatch(conn, data.split(b"\n", 1)[0])

    def _dispatch(self, conn: socket.socket, line: bytes) -> None:
        reply = _replier(conn)
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
        self._buffers.pop(conn, None)
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


def _replier(conn: socket.socket) -> Reply:
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
        # does not read never holds up the packet loop
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


def request(path: Path, command: str, timeout: float = 120.0, **fields: Any) -> dict[str, Any]:
    """Send one request to the daemon's control socket and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
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
