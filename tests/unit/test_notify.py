"""sd_notify against a real datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from portguard.io import notify


def listen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    return sock


def test_ready_reloading_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with listen(tmp_path, monkeypatch) as sock:
        assert notify.ready("deciding on queue 0")
        assert sock.recv(4096) == b"READY=1\nSTATUS=deciding on queue 0"
        assert notify.reloading()
        lines = sock.recv(4096).decode().splitlines()
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
        assert int(lines[1].split("=")[1]) > 0
        assert notify.stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"portguard-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.notify("WATCHDOG=1")
        assert sock.recv(64) == b"WATCHDOG=1"


def test_no_manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.ready("x")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert not notify.stopping()


def test_a_manager_that_never_reads_does_not_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with listen(tmp_path, monkeypatch):
        sent = [notify.notify(f"STATUS={n}") for n in range(200)]  # nobody reads
        assert sent[0] and not all(sent)  # the queue filled up; later messages were dropped


def test_stopping_and_status_carry_a_status_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with listen(tmp_path, monkeypatch) as sock:
        assert notify.stopping("removing the hooks")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=removing the hooks"
        assert notify.status("policy abc")
        assert sock.recv(4096) == b"STATUS=policy abc"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "1000000"}, 0.25),  # a quarter: systemd asks for at least a half
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 7.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4243"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": "4242"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert notify.watchdog_interval(environ, pid=4242) == expected


def test_watchdog_interval_reads_this_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval() is None


def test_heartbeat_sends_at_most_once_per_interval() -> None:
    sent: list[float] = []
    clock = [100.0]
    heartbeat = notify.Heartbeat(0.25, lambda: sent.append(clock[0]))
    for step in range(21):  # a loop turning every 0.05 s for one second
        clock[0] = 100.0 + step * 0.05
        heartbeat.beat(clock[0])
    assert sent == pytest.approx([100.0, 100.25, 100.5, 100.75, 101.0])


def test_heartbeat_bounds_how_long_the_loop_may_block() -> None:
    heartbeat = notify.Heartbeat(0.25, lambda: None)
    assert heartbeat.wait(10.0, 1.0) == 0.0  # never beat: at once
    assert heartbeat.beat(10.0)
    assert heartbeat.wait(10.1, 1.0) == pytest.approx(0.15)
    assert heartbeat.wait(10.1, 0.05) == 0.05
    assert heartbeat.wait(11.0, 1.0) == 0.0  # overdue: no negative timeout


def test_no_watchdog_never_sends_and_never_shortens_the_wait() -> None:
    sent: list[int] = []
    heartbeat = notify.Heartbeat(None, lambda: sent.append(1))
    assert not heartbeat.beat(0.0) and not heartbeat.beat(1e9)
    assert heartbeat.wait(0.0, 1.0) == 1.0
    assert sent == []


def test_watchdog_pings_the_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with listen(tmp_path, monkeypatch) as sock:
        heartbeat = notify.watchdog({"WATCHDOG_USEC": "400000"})
        assert heartbeat.interval == 0.1
        assert heartbeat.beat(5.0) and not heartbeat.beat(5.05) and heartbeat.beat(5.1)
        assert [sock.recv(64), sock.recv(64)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(64)


def test_pipe_beat_writes_the_worker_index_and_never_blocks() -> None:
    read_end, write_end = os.pipe()
    try:
        beat = notify.pipe_beat(write_end, 3)
        assert beat() and beat()
        assert os.read(read_end, 16) == b"\x03\x03"
        while beat():  # nobody reads: the pipe fills up, and the beat gives up at once
            pass
        assert not beat()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_worker_watchdog_pings_only_while_every_worker_beats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_end, write_end = os.pipe()
    with listen(tmp_path, monkeypatch) as sock:
        watchdog = notify.WorkerWatchdog(read_end, workers=2, interval=0.25)
        try:
            assert not watchdog.tick(0.0)  # neither worker beat yet
            watchdog.seen(b"\x00", 0.0)
            assert not watchdog.tick(0.1)  # worker 1 never beat
            watchdog.seen(b"\x01\x00", 0.2)
            assert watchdog.tick(0.3)
            assert sock.recv(64) == b"WATCHDOG=1"
            assert not watchdog.tick(0.4)  # too soon after the last ping
            watchdog.seen(b"\x00", 0.6)  # worker 1 went silent at 0.2
            assert watchdog.tick(0.7)  # silent for 0.5 s: still within two intervals
            assert not watchdog.tick(1.0)  # silent for 0.8 s: stuck, no more pings
            watchdog.seen(b"\x01\x00\x07", 1.1)  # back (an unknown index is ignored)
            assert watchdog.tick(1.1)
            assert sock.recv(64) == b"WATCHDOG=1" and sock.recv(64) == b"WATCHDOG=1"
        finally:
            watchdog.close()
            os.close(write_end)


def test_worker_watchdog_drains_the_real_pipe() -> None:
    read_end, write_end = os.pipe()
    watchdog = notify.WorkerWatchdog(read_end, workers=2, interval=10.0)
    try:
        watchdog.drain()  # nothing written yet: returns at once
        assert not watchdog.all_alive(time.monotonic())
        notify.pipe_beat(write_end, 0)()
        notify.pipe_beat(write_end, 1)()
        watchdog.drain()
        assert watchdog.all_alive(time.monotonic())
        assert watchdog.fileno() == read_end
    finally:
        watchdog.close()
        os.close(write_end)
