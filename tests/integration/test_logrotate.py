"""The shipped logrotate config, run by the real logrotate against the real daemon.

A steady stream of denied connections (one decision event each, flood control off) crosses
the lab while `logrotate -f` rotates the daemon's file output several times, using
contrib/logrotate/portguard with only the log path, the user (root: the lab's daemon runs as
root) and the postrotate command substituted.
Afterwards the rotated files (plain and gzip) and the current file together must hold every
decision exactly once, each line a complete JSON object.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, forked_children
from lab.peers import python_env

SHIPPED = Path(__file__).resolve().parents[2] / "contrib" / "logrotate" / "portguard"
SHIPPED_PATH = "/var/log/portguard/*.log"
SHIPPED_USER = " portguard adm"  # in `su portguard adm` and `create 0640 portguard adm`
SHIPPED_SIGNAL = "systemctl kill --kill-whom=all --signal=USR1 portguard.service"
POSTROTATE = re.compile(r"(?ms)^(\s*postrotate\n)(.*?)(^\s*endscript)$")

ATTEMPTS = 2400  # denied connections, alternating IPv4 and IPv6
RATE = 300.0  # attempts a second: about 8 s of stream
ROTATE_EVERY = 1.2  # seconds between forced rotations while the stream runs
FIRST_PORT = 20000  # source ports FIRST_PORT .. FIRST_PORT + ATTEMPTS - 1, one per attempt

# Run in the subscriber namespace: connect to the MX's port 25 from a fresh source port each
# time, at a steady rate; the shipped rules reject (RST) every attempt. Prints one JSON line.
STREAM = """
import json, socket, sys, time
src4, src6, dst4, dst6, first, count, rate = sys.argv[1:8]
first, count, rate = int(first), int(count), float(rate)
refused, other = [], []
start = time.monotonic()
for i in range(count):
    time.sleep(max(0.0, start + i / rate - time.monotonic()))
    v6 = i % 2
    family = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst, port = (src6 if v6 else src4), (dst6 if v6 else dst4), first + i
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(3)
        sock.bind((src, port))
        try:
            sock.connect((dst, 25))
            other.append([src, port, "connected"])
        except ConnectionRefusedError:
            refused.append([src, port])
        except OSError as error:
            other.append([src, port, repr(error)])
print(json.dumps({"refused": refused, "other": other}), flush=True)
"""


def lab_config(shipped: str, log_path: Path, pids: list[int]) -> str:
    """The shipped config with the lab's log path and `kill -USR1 <pids>` as postrotate."""
    assert shipped.count(SHIPPED_PATH) == 1, "the shipped config's log path changed"
    blocks = POSTROTATE.findall(shipped)
    assert len(blocks) == 1, "the shipped config must have exactly one postrotate block"
    assert SHIPPED_SIGNAL in blocks[0][1], "the shipped postrotate command changed"
    config = shipped.replace(SHIPPED_PATH, str(log_path))
    # the lab's daemon runs as root, and a fresh machine may have no `portguard` user yet
    assert config.count(SHIPPED_USER) == 2, "the shipped config's su/create user changed"
    config = config.replace(SHIPPED_USER, " root adm")
    kill = "kill -USR1 " + " ".join(str(pid) for pid in pids)
    config = POSTROTATE.sub(lambda m: f"{m[1]}        {kill}\n{m[3]}", config)
    assert SHIPPED_PATH not in config and "systemctl" not in config
    assert kill in config
    return config


def rotate_count(config: str) -> int:
    found = re.findall(r"(?m)^\s*rotate\s+(\d+)\s*$", config)
    assert len(found) == 1, "the shipped config must keep a `rotate N`"
    return int(found[0])


def logrotate(config: Path, state: Path) -> None:
    proc = subprocess.run(
        ["logrotate", "-f", "-s", str(state), str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr


def start_stream(lab: Lab, report: Path) -> subprocess.Popen[bytes]:
    """The stream, writing its JSON report to `report` (a pipe could fill up and block it)."""
    argv = [sys.executable, "-c", STREAM, a.SUBSCRIBER.v4, a.SUBSCRIBER.v6, a.MX.v4, a.MX.v6]
    argv += [str(FIRST_PORT), str(ATTEMPTS), str(RATE)]
    with report.open("wb") as out:
        return lab.popen("sub", argv, stdout=out, env=python_env())


def file_lines(path: Path) -> list[str]:
    """The lines of a log file (gzip or plain); the file must end with a complete line."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = data.decode()
    assert text == "" or text.endswith("\n"), f"{path.name} ends with a partial line"
    return text.splitlines()


def all_events(log_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every event in the current file and its rotations, by file name; each line is JSON."""
    files = sorted(log_path.parent.glob(log_path.name + "*"))
    by_file: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        events = [json.loads(line) for line in file_lines(path)]
        assert all(isinstance(event, dict) for event in events), path.name
        by_file[path.name] = events
    return by_file


def dataset(event: dict[str, Any]) -> str:
    return str(event.get("event", {}).get("dataset", ""))


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as built:
        yield built


def service_pids(pid: int) -> list[int]:
    """The daemon and its forked workers: what `systemctl kill --kill-whom=all` signals."""
    assert b"portguard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return [pid, *forked_children(pid)]


@pytest.mark.parametrize("workers", [1, 2])
def test_rotation_during_a_stream_loses_and_repeats_no_line(
    lab: Lab, tmp_path: Path, workers: int
) -> None:
    daemon = LabDaemon(lab, flood_window=0, workers=workers)  # every deny is its own line
    daemon.start()
    try:
        assert daemon.proc is not None
        pids = service_pids(daemon.proc.pid)
        assert len(pids) == (2 if workers == 1 else 1 + workers)  # 1 worker: + its log process
        shipped = SHIPPED.read_text()
        config = tmp_path / "portguard.logrotate"
        config.write_text(lab_config(shipped, daemon.events_path, pids))
        rotations = stream_with_rotations(lab, config, tmp_path)
        assert rotations + 1 < rotate_count(shipped), "no rotated file may be deleted here"
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr_tail()
    check_every_decision_once(daemon.events_path, rotations, workers)


def stream_with_rotations(lab: Lab, config: Path, workdir: Path) -> int:
    """Run the stream, rotating every ROTATE_EVERY s meanwhile and once after; rotations."""
    report, state = workdir / "stream.json", workdir / "logrotate.state"
    stream = start_stream(lab, report)
    deadline = time.monotonic() + ATTEMPTS / RATE * 2 + 10
    rotations = 0
    while stream.poll() is None:
        assert time.monotonic() < deadline, "the stream of connections stalled"
        time.sleep(ROTATE_EVERY)
        logrotate(config, state)
        rotations += 1
    result = json.loads(report.read_text())
    assert result["other"] == [], result["other"][:5]  # every attempt got its RST
    assert len(result["refused"]) == ATTEMPTS
    time.sleep(0.5)
    logrotate(config, state)  # one more with the stream's tail in the file
    return rotations + 1


def check_every_decision_once(log_path: Path, rotations: int, workers: int) -> None:
    by_file = all_events(log_path)
    compressed = [name for name in by_file if name.endswith(".gz")]
    with_decisions = [n for n, evs in by_file.items() if any(map(is_decision, evs))]
    assert len(compressed) >= rotations - 2, sorted(by_file)  # delaycompress keeps .1 plain
    assert len(with_decisions) >= rotations - 1, sorted(by_file)  # rotated mid-stream
    events = [event for events in by_file.values() for event in events]
    decisions = [event for event in events if is_decision(event)]
    seen = Counter((e["source"]["ip"], e["source"]["port"]) for e in decisions)
    expected = {(attempt_source(i), FIRST_PORT + i) for i in range(ATTEMPTS)}
    assert [key for key, n in seen.items() if n > 1] == [], "decisions written twice"
    assert sorted(expected - set(seen)) == [], "decisions lost in rotation"
    assert set(seen) == expected
    assert {(e["event"]["action"], e["rule"]["id"]) for e in decisions} == {("reject", "block-25")}
    lifecycle = [event for event in events if dataset(event) == "portguard.lifecycle"]
    check_lifecycle(lifecycle, workers)


def check_lifecycle(lifecycle: list[dict[str, Any]], workers: int) -> None:
    """One start and stop per worker, the hooks once; no event dropped from any queue."""
    actions = Counter(event["event"]["action"] for event in lifecycle)
    expected = {"hook-installed": 1, "start": workers, "stop": workers, "hook-removed": 1}
    assert {action: actions[action] for action in expected} == expected, actions
    stops = [event["portguard"] for event in lifecycle if event["event"]["action"] == "stop"]
    assert [stop["events_dropped"] for stop in stops] == [0] * workers
    assert sum(stop["packets"] for stop in stops) >= ATTEMPTS


def is_decision(event: dict[str, Any]) -> bool:
    return dataset(event) == "portguard.decision"


def attempt_source(index: int) -> str:
    return a.SUBSCRIBER.v6 if index % 2 else a.SUBSCRIBER.v4
