"""`portguard report` end to end: files (plain, rotated, gzip) in, a table or JSON lines out,
exit 0; a file that cannot be read: `path: message`, exit 1; bad arguments: exit 2."""

from __future__ import annotations

import gzip
import io
import time
from pathlib import Path

import orjson
import pytest

from portguard.cli.main import main
from portguard.cli.report import ReportArgs, report
from portguard.core.events.record import Event, timestamp
from tests.unit.test_abuse import DEFAULT_WINDOW, logged, traffic

NOW = 1795798800.0


def write_logs(tmp_path: Path) -> list[Path]:
    """The traffic's folded log, rotated: the oldest third gzipped, then `.1`, then the live
    file with garbage and a cut last line."""
    lines = logged(traffic(), DEFAULT_WINDOW)
    third = len(lines) // 3
    parts = [lines[:third], lines[third : 2 * third], lines[2 * third :]]
    paths = [tmp_path / "decisions.log.2.gz", tmp_path / "decisions.log.1",
             tmp_path / "decisions.log"]  # fmt: skip
    paths[0].write_bytes(gzip.compress(b"".join(line + b"\n" for line in parts[0])))
    paths[1].write_bytes(b"".join(line + b"\n" for line in parts[1]))
    noise = b'{"msg": "another program"}\nnot json at all\n\n'
    paths[2].write_bytes(noise + b"".join(line + b"\n" for line in parts[2]) + b'{"@timest')
    return paths


def run(args: ReportArgs, now: float = NOW + 3600) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = report(args, out, err, now)
    return code, out.getvalue(), err.getvalue()


def test_json_lines_rank_the_bot_first_across_rotated_and_gzipped_files(tmp_path: Path) -> None:
    code, out, err = run(ReportArgs(write_logs(tmp_path), output_format="json", top=0))
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [row["source"] for row in rows] == ["100.64.10.10", "100.64.10.15",
                                               "2001:db8:64:10::/64", "100.64.10.11"]  # fmt: skip
    assert rows[0]["rank"] == 1 and rows[0]["attempts"] == 6000
    assert rows[0]["destinations_exact"] is False and rows[0]["ports"] == [25]
    assert rows[3]["attempts"] == 1 and rows[3]["sample"] == ["198.51.100.7:25"]
    assert err == "portguard report: 3 lines skipped (not portguard events)\n"


def test_the_table_is_aligned_and_says_what_it_covers(tmp_path: Path) -> None:
    code, out, _ = run(ReportArgs(write_logs(tmp_path), top=2))
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == ("sources denied on ports 25, 465, 587, all times in the logs: "
                        "the top 2 of 4 sources, most attempts first")  # fmt: skip
    header, first, second = lines[2:5]
    assert header.split()[:4] == ["#", "source", "attempts", "destinations"]
    assert first.split()[:3] == ["1", "100.64.10.10", "6,000"]
    assert first.split()[3].startswith("~")  # an estimate: over 100 destinations
    assert second.split()[:2] == ["2", "100.64.10.15"]
    end = header.index("attempts") + len("attempts")
    assert first[end - 5 : end] == "6,000"  # numbers right-aligned under their heading
    assert lines[-1].startswith("read 3 files: ") and "3 other lines skipped" in lines[-1]


def deny_line(at: float, src: str) -> bytes:
    event: Event = {"@timestamp": timestamp(at), "rule": {"id": "block-25"},
                    "event": {"type": ["connection", "denied"], "action": "reject",
                              "dataset": "portguard.decision"},
                    "source": {"ip": src},
                    "destination": {"ip": "198.51.100.25", "port": 25}}  # fmt: skip
    return orjson.dumps(event) + b"\n"


def test_since_is_relative_to_now(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    path.write_bytes(deny_line(NOW, "100.64.0.1") + deny_line(NOW + 3000, "100.64.0.2"))
    code, out, _ = run(ReportArgs([path], since=1800, output_format="json"), now=NOW + 3600)
    assert code == 0 and [orjson.loads(line)["source"] for line in out.splitlines()] == [
        "100.64.0.2"
    ]
    _, table, _ = run(ReportArgs([path], since=1800), now=NOW + 3600)
    assert "since 2026-11-27 17:30:00Z" in table and "(1 before the --since time)" in table


def test_no_attempt_is_an_empty_report_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_bytes(b"")
    code, out, err = run(ReportArgs([path]))
    assert (code, err) == (0, "") and "no denied attempts" in out
    assert run(ReportArgs([path], output_format="json"))[1] == ""


def test_a_file_that_cannot_be_read_is_an_error_and_exit_1(tmp_path: Path) -> None:
    good = tmp_path / "decisions.log"
    good.write_bytes(deny_line(NOW, "100.64.0.1"))
    missing = tmp_path / "decisions.log.1"
    code, out, err = run(ReportArgs([good, missing]))
    assert (code, out) == (1, "")
    assert err == f"{missing}: No such file or directory\n"


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "decisions.log"
    path.write_bytes(
        deny_line(time.time() - 60, "100.64.0.1") + deny_line(time.time() - 7200, "100.64.0.2")
    )
    assert main(["report", "--log", str(path), "--since", "1h", "--format", "json",
                 "--top", "5", "--ports", "25,587"]) == 0  # fmt: skip
    [line] = capsys.readouterr().out.splitlines()
    assert orjson.loads(line)["source"] == "100.64.0.1"
    assert main(["report", "--log", str(path), str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'nope'}: No such file or directory\n"


@pytest.mark.parametrize(
    "argv",
    [["report"], ["report", "--log"], ["report", "--log", "x", "--since", "yesterday"],
     ["report", "--log", "x", "--top", "-1"], ["report", "--log", "x", "--ports", "25,smtp"],
     ["report", "--log", "x", "--ports", "70000"], ["report", "--log", "x", "--format", "csv"]],
)  # fmt: skip
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "usage:" in capsys.readouterr().err
