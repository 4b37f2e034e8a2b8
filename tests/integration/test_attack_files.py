"""Hostile files and hostile file systems, through the real CLI and the real daemon.

An operator (or whoever can write into rules.d, a list file or the log directory) hands portguard
deeply nested TOML, set unions that recurse, a 100 MB line, binary data, ten million lines, a
FIFO or a device as a list file, or a symlink where the log file should be. `check` must answer
every one with `path:line: message` (or `path: message`) and exit 1, never a traceback; the
daemon refuses to start with a clear message, keeps its policy on a reload and never writes
through a symlink. A WAN interface that does not exist is named by `check` and by the daemon.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.daemon import LabDaemon
from lab.netns import LabError
from lab.peers import python_env
from lab.topology import Lab

LOCATED = re.compile(r"^(?P<path>/[^:]+?)(:(?P<line>\d+)(:\d+)?)?: \S.*$")
LIVENESS = 120.0  # seconds: a generous bound for a check on 100+ MB of input on a slow machine
MAX_CHECK_MEMORY = 1536 * 1024  # KiB: the 10-million-line list stays well below this
RULE = '[[rule]]\nid = "r"\nsrc = "hostile"\naction = "allow"\n'


def check(config: Path, *extra: str, timeout: float = LIVENESS) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "portguard", "check", *extra, "--config", str(config)]
    return subprocess.run(
        argv, capture_output=True, text=True, errors="replace", timeout=timeout, env=python_env()
    )


def tree(tmp_path: Path, wan: str = "lo", outputs: str = '{ type = "stdout" }') -> Path:
    (tmp_path / "rules.d" / "lists").mkdir(parents=True)
    config = tmp_path / "portguard.toml"
    config.write_text(
        f'[network]\nwan = ["{wan}"]\n[rules]\npaths = ["rules.d"]\n[log]\noutputs = [{outputs}]\n'
    )
    return config


def assert_clean_failure(done: subprocess.CompletedProcess[str], where: str, words: str) -> str:
    """Exit 1, no traceback, every line `path[:line]: message` and short; one names `where`."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and len(lines) <= 101, done.stderr[-2000:]
    for line in lines:
        assert LOCATED.match(line), f"not path:line: message: {line[:300]!r}"
        assert len(line) < 1000, f"a {len(line)}-character message"
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line), f"raw control bytes: {line!r}"
    hits = [line for line in lines if line.startswith(where) and re.search(words, line)]
    assert hits, f"no message at {where} saying {words!r}:\n{done.stderr[-2000:]}"
    return hits[0]


# --- deep nesting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 10_000 + "]" * 10_000 + "\n",
        "x = " + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n",
        "a" + ".a" * 10_000 + " = 1\n",
        "[" + ".".join(["a"] * 10_000) + "]\n",
        "x = " + "[" * 200 + "]" * 200 + "\n",  # deep, yet within what tomllib itself survives
    ],
    ids=["arrays", "inline-tables", "dotted-keys", "table-header", "arrays-200"],
)
def test_deep_nesting_is_a_located_error(tmp_path: Path, text: str) -> None:
    config = tree(tmp_path)
    rules = tmp_path / "rules.d" / "10-deep.toml"
    rules.write_text("# a hostile file\n" + text)
    line = assert_clean_failure(check(config), f"{rules}:2", "nest")
    assert "32" in line  # the limit is named


def test_deep_nesting_in_the_config_is_a_located_error(tmp_path: Path) -> None:
    config = tree(tmp_path)
    (tmp_path / "rules.d" / "10-a.toml").write_text('[default]\naction = "allow"\n')
    config.write_text(config.read_text() + "x = " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert_clean_failure(check(config), f"{config}:7", "nest")


# --- set unions ----------------------------------------------------------------------------


def sets_chain(count: int, cycle: bool) -> str:
    parts = [f'[sets.s{i}]\nsets = ["s{i + 1}"]\n' for i in range(count)]
    tail = 'sets = ["s0"]' if cycle else 'cidrs = ["192.0.2.0/24"]'
    return "".join(parts) + f"[sets.s{count}]\n{tail}\n" + RULE.replace("hostile", "s0")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[sets.hostile]\nsets = ["hostile"]\n' + RULE, "includes itself"),
        (
            '[sets.hostile]\nsets = ["b"]\n[sets.b]\nsets = ["c"]\n[sets.c]\nsets = ["hostile"]\n'
            + RULE,
            "cycle",
        ),
        (sets_chain(5000, cycle=True), "cycle"),
    ],
    ids=["self", "three", "5000"],
)
def test_recursive_set_unions_are_located_errors(tmp_path: Path, text: str, words: str) -> None:
    config = tree(tmp_path)
    rules = tmp_path / "rules.d" / "10-sets.toml"
    rules.write_text(text)
    assert_clean_failure(check(config), f"{rules}:", words)


def test_a_5000_set_chain_without_cycle_loads(tmp_path: Path) -> None:
    config = tree(tmp_path)
    (tmp_path / "rules.d" / "10-sets.toml").write_text(sets_chain(5000, cycle=False))
    done = check(config)
    assert done.returncode == 0, done.stderr[-2000:]


# --- list files: huge lines, binary data, millions of lines, special files ---------------------


def list_tree(tmp_path: Path) -> tuple[Path, Path]:
    config = tree(tmp_path)
    (tmp_path / "rules.d" / "10-a.toml").write_text(
        '[sets.hostile]\nfiles = ["lists/hostile.txt"]\n' + RULE
    )
    return config, tmp_path / "rules.d" / "lists" / "hostile.txt"


def test_a_100_mb_line_in_a_list_file(tmp_path: Path) -> None:
    config, listed = list_tree(tmp_path)
    with listed.open("w") as out:
        out.write("192.0.2.1\n")
        for _ in range(100):
            out.write("1" * 1_000_000)
        out.write("\n")
    assert_clean_failure(check(config), f"{listed}:2", "characters")


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        (b"192.0.2.1\n192.0.2\x00.2\n", ":2", "control character"),
        (b"192.0.2.1\n192.0.\xff2.2\n", ":2", "UTF-8"),
        (bytes(range(256)) * 4096, ":", "UTF-8|control"),
    ],
    ids=["nul", "invalid-utf8", "binary"],
)
def test_binary_list_files(tmp_path: Path, data: bytes, where: str, words: str) -> None:
    config, listed = list_tree(tmp_path)
    listed.write_bytes(data)
    assert_clean_failure(check(config), f"{listed}{where}", words)


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        (b'[default]\naction = "allow"\n# \x00\n', ":3", ""),
        (b'[default]\naction = "allow"\nx = "\xff"\n', ":3", "UTF-8"),
        (b'[[rule]]\nid = "r\\u001b[2J"\naction = "allow"\n', ":2", ""),
    ],
    ids=["nul", "invalid-utf8", "escape-sequence"],
)
def test_binary_rule_files(tmp_path: Path, data: bytes, where: str, words: str) -> None:
    config = tree(tmp_path)
    rules = tmp_path / "rules.d" / "10-bin.toml"
    rules.write_bytes(data)
    assert_clean_failure(check(config), f"{rules}{where}", words)


def children_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def test_ten_million_lines_are_refused_within_bounded_memory(tmp_path: Path) -> None:
    config, listed = list_tree(tmp_path)
    with listed.open("w") as out:
        block = "".join(f"10.{i >> 8 & 255}.{i & 255}.{j}\n" for i in range(256) for j in range(40))
        for _ in range(10_000_000 // (256 * 40) + 1):
            out.write(block)
    before = children_peak_kib()
    line = assert_clean_failure(check(config), f"{listed}", "entries")
    assert "4000000" in line.replace(",", "")  # the documented limit
    peak = children_peak_kib()
    assert peak < MAX_CHECK_MEMORY or peak == before, f"check peaked at {peak} KiB"


def test_a_fifo_as_list_file_does_not_hang_check(tmp_path: Path) -> None:
    config, listed = list_tree(tmp_path)
    os.mkfifo(listed)
    assert_clean_failure(check(config, timeout=30), f"{tmp_path}/rules.d/10-a.toml:2", "regular")


def test_a_device_as_list_file_is_not_read_for_ever(tmp_path: Path) -> None:
    config, listed = list_tree(tmp_path)
    listed.symlink_to("/dev/zero")
    assert_clean_failure(check(config, timeout=30), f"{tmp_path}/rules.d/10-a.toml:2", "regular")


def test_a_huge_rule_file_is_refused(tmp_path: Path) -> None:
    config = tree(tmp_path)
    rules = tmp_path / "rules.d" / "10-big.toml"
    with rules.open("w") as out:
        out.write("[sets.hostile]\ncidrs = [\n")
        for _ in range(100):
            out.write('"192.0.2.1",\n' * 50_000)
        out.write("]\n" + RULE)
    assert_clean_failure(check(config), f"{rules}", "MiB")


# --- WAN interfaces --------------------------------------------------------------------------


def test_check_names_a_wan_interface_that_does_not_exist(tmp_path: Path) -> None:
    config = tree(tmp_path, wan="pgnosuch0")
    (tmp_path / "rules.d" / "10-a.toml").write_text('[default]\naction = "allow"\n')
    done = check(config)
    assert done.returncode == 0, done.stderr
    assert f'{config}:2:8: warning: wan: interface "pgnosuch0" does not exist' in done.stdout
    assert check(config, "--strict").returncode == 2
    assert (
        "pgnosuch0"
        in json.loads(check(config, "--format", "json").stdout)["warnings"][0]["message"]
    )


def events_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def actions(path: Path) -> list[str]:
    return [event["event"]["action"] for event in events_of(path)]


@pytest.fixture
def lab_daemon(lab: Lab) -> Iterator[Callable[..., LabDaemon]]:
    started: list[LabDaemon] = []

    def make(**kw: Any) -> LabDaemon:
        daemon = LabDaemon(lab, **kw)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def test_the_daemon_logs_a_missing_wan_and_when_it_appears(
    lab: Lab, lab_daemon: Callable[..., LabDaemon]
) -> None:
    daemon = lab_daemon()
    text = daemon.config.read_text()
    assert 'wan = ["' in text
    daemon.config.write_text(re.sub(r'wan = \["[^"]*"\]', 'wan = ["pgnosuch0"]', text))
    daemon.start()
    assert wait_for(lambda: "wan-missing" in actions(daemon.events_path))
    missing = next(
        e for e in events_of(daemon.events_path) if e["event"]["action"] == "wan-missing"
    )
    assert missing["log"]["level"] == "error" and missing["portguard"]["interfaces"] == [
        "pgnosuch0"
    ]
    assert "wan-found" not in actions(daemon.events_path)
    # (a veth pair: this kernel has no dummy driver; what matters is a link that appears)
    add = ["ip", "link", "add", "pgnosuch0", "type", "veth", "peer", "name", "pgnosuch1"]
    lab.run("gw", add, check=True)
    try:
        assert wait_for(lambda: "wan-found" in actions(daemon.events_path)), actions(
            daemon.events_path
        )
    finally:
        lab.run("gw", ["ip", "link", "del", "pgnosuch0"])
    assert wait_for(lambda: actions(daemon.events_path).count("wan-missing") == 2)


# --- the daemon: hostile files at start and at reload ----------------------------------------


def test_the_daemon_keeps_its_policy_when_a_reload_meets_a_hostile_file(
    lab: Lab, lab_daemon: Callable[..., LabDaemon], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "10-a.toml").write_text('[default]\naction = "allow"\n')
    daemon = lab_daemon(rules=[rules])
    daemon.start()
    (rules / "20-deep.toml").write_text("x = " + "[" * 10_000 + "]" * 10_000 + "\n")
    argv = [sys.executable, "-m", "portguard", "reload", "--config", str(daemon.config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=python_env())
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{rules}/20-deep.toml:1:" in done.stderr and "nest" in done.stderr
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert wait_for(lambda: "reload-failed" in actions(daemon.events_path))


def test_the_daemon_refuses_to_start_on_a_hostile_file(
    lab: Lab, lab_daemon: Callable[..., LabDaemon], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "10-deep.toml").write_text("x = " + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n")
    daemon = lab_daemon(rules=[rules])
    with pytest.raises(LabError, match="exited with 1"):
        daemon.start(timeout=30)
    err = daemon.stderr_tail()
    assert "Traceback" not in err and f"{rules}/10-deep.toml:1:" in err


# --- file outputs through symlinks -----------------------------------------------------------


def test_check_refuses_a_symlinked_file_output(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    config = tree(tmp_path, outputs=f'{{ type = "file", path = "{link}" }}')
    (tmp_path / "rules.d" / "10-a.toml").write_text('[default]\naction = "allow"\n')
    assert_clean_failure(check(config), f"{config}:6", "symbolic link")
    assert target.read_text() == "precious\n"


def test_the_daemon_refuses_to_start_with_a_symlinked_file_output(
    lab: Lab, lab_daemon: Callable[..., LabDaemon]
) -> None:
    daemon = lab_daemon()
    target = daemon.dir / "precious"
    target.write_text("precious\n")
    daemon.events_path.symlink_to(target)
    with pytest.raises(LabError, match="exited with 1"):
        daemon.start(timeout=30)
    err = daemon.stderr_tail()
    assert str(daemon.events_path) in err and "symbolic link" in err, err
    assert target.read_text() == "precious\n"


def test_a_symlink_planted_at_logrotate_is_never_written_through(
    lab: Lab, lab_daemon: Callable[..., LabDaemon]
) -> None:
    daemon = lab_daemon()
    daemon.start()
    target = daemon.dir / "precious"
    target.write_text("precious\n")
    assert wait_for(lambda: "start" in actions(daemon.events_path))
    rotated = daemon.events_path.with_suffix(".1")
    daemon.events_path.rename(rotated)
    daemon.events_path.symlink_to(target)
    assert daemon.proc is not None
    daemon.proc.send_signal(10)  # SIGUSR1, as logrotate's postrotate sends it
    argv = [sys.executable, "-m", "portguard", "reload", "--config", str(daemon.config)]
    for _ in range(3):  # events after the reopen: each reload writes one
        subprocess.run(argv, capture_output=True, timeout=30, env=python_env())
    assert wait_for(lambda: "sink-error" in actions(daemon.stdout_path))
    error = next(e for e in events_of(daemon.stdout_path) if e["event"]["action"] == "sink-error")
    assert "symbolic link" in error["message"] and str(daemon.events_path) in error["message"]
    assert target.read_text() == "precious\n"
    assert daemon.proc.poll() is None
