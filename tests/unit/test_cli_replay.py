"""`portguard replay` as an operator runs it: the totals, the events the daemon would have
logged (ECS-conformant, flood control as configured), --compare's exit codes, broken captures
and the errors that are messages, never tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scapy.packet import Packet

from portguard.cli import replay as replay_command
from portguard.cli.main import main
from portguard.core.events.lines import LogItem
from portguard.core.events.record import Observer
from portguard.log import handoff
from portguard.log.formats import render
from portguard.log.logloop import Outputs
from portguard.log.sinks import prepare
from tests.captures import INSIDE, MX4, MX6, SMARTHOST4, SUB4, SUB6, T0, syn, write, write_ng
from tests.ecs import nonconformities
from tests.unit.test_replay import RULES, by_the_gate, mixed, ruleset

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, name: str = "portguard.toml", rules: str = RULES,
           internal: tuple[str, ...] = INSIDE, flood_window: int = 60) -> Path:  # fmt: skip
    folder = tmp_path / name.removesuffix(".toml")
    folder.mkdir()
    (folder / "rules.toml").write_text(rules)
    inside = f"internal = {json.dumps(list(internal))}\n" if internal else ""
    path = tmp_path / name
    path.write_text(f'[network]\nwan = ["eth0"]\n{inside}[rules]\npaths = ["{folder}"]\n'
                    f"[log]\nflood_window = {flood_window}\n")  # fmt: skip
    return path


def capture(tmp_path: Path, packets: list[tuple[float, Packet]] | None = None) -> Path:
    return write(tmp_path / "capture.pcap", "ethernet", mixed() if packets is None else packets)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_totals_by_rule_and_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--config", str(config(tmp_path)), str(capture(tmp_path)))
    assert (code, err) == (0, "")
    rows = {tuple(line.split()) for line in out.splitlines()}
    expected = {
        ("block-25", "reject", "2"),
        ("inbound-25", "drop", "2"),
        ("default", "allow", "2"),
        ("smarthost", "allow", "1"),
        ("submission", "allow", "1"),
        ("quiet", "allow", "1"),
    }
    assert expected <= rows
    assert f"{tmp_path / 'capture.pcap'}: 12 packets, 9 SYNs decided" in out
    assert "3  not a SYN to a hooked port" in out


def daemon_lines(records: list[Any], flood_window: int) -> list[bytes]:
    """What the daemon's log process writes for these decision records."""
    written: list[LogItem] = []

    class Writer:
        ecs_only = True  # decisions come rendered, as with the daemon's usual outputs

        def submit(self, event: LogItem) -> bool:
            written.append(prepare(event))  # as EventWriter.submit prepares it
            return True

        def submit_many(self, events: list[LogItem]) -> bool:
            return all([self.submit(event) for event in events])

        def close(self) -> None:
            pass

    outputs = Outputs(Writer(), Observer("gw", "0"), {}, flood_window)  # type: ignore[arg-type]
    for record in records:
        outputs.handle(handoff.loggable_frame(record)[4:])
    outputs.finish(None)
    return [render(event, "ecs") for event in written]


@pytest.mark.parametrize("flood_window", [0, 60])
def test_json_is_what_the_daemon_would_have_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flood_window: int
) -> None:
    bot = [(T0 + 10 + i, syn(SUB4, MX4, sport=42000 + i)) for i in range(10)]  # ten denies
    packets = [*mixed(), *bot]
    path = config(tmp_path, flood_window=flood_window)
    code, out, _ = run(
        capsys, "--config", str(path), "--format", "json", str(capture(tmp_path, packets))
    )
    assert code == 0
    lines = out.encode().splitlines()
    rules = ruleset(tmp_path)
    records = [found[4] for found in by_the_gate(rules, packets) if found[4] is not None]
    expected = daemon_lines(records, flood_window)
    strip = [_without_host(line) for line in lines]
    assert strip == [_without_host(line) for line in expected]
    events = [json.loads(line) for line in lines]
    for event in events:
        assert nonconformities(event) == []
    summaries = [e for e in events if "aggregate" in e["portguard"]]
    if (
        flood_window
    ):  # the bot's 10 denies (plus the earlier one, same source and rule): 1 + summary
        assert [s["portguard"]["aggregate"]["count"] for s in summaries] == [11]
        assert len(events) == 8 + 1  # the decisions logged (not quiet's) and the summary
    else:
        assert summaries == [] and len(events) == 8 + 10


def _without_host(line: bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(line)
    event["observer"].pop("hostname")
    event["observer"].pop("version")
    return event


def test_every_replayed_event_conforms_to_ecs_ipv6_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packets = [(T0, syn(SUB6, MX6)), (T0 + 1, syn(MX6, SUB6)), (T0 + 2, syn(SUB4, SMARTHOST4))]
    path = write_ng(tmp_path / "c.pcapng", packets)
    code, out, _ = run(capsys, "--config", str(config(tmp_path)), "--format", "json", str(path))
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(events) == 3
    assert all(nonconformities(event) == [] for event in events)


def test_inside_is_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, internal=())
    code, _, err = run(capsys, "--config", str(path), str(capture(tmp_path)))
    assert code == 1
    assert "Set [network] internal = [CIDRs] in the config or give --inside CIDR" in err


def test_inside_overrides_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path)
    packets = [(T0, syn(SUB4, MX4))]
    code, out, _ = run(capsys, "--config", str(path), "--inside", "198.51.100.0/24",
                       str(capture(tmp_path, packets)))  # fmt: skip
    assert code == 0
    assert ("default", "allow", "1") in {tuple(line.split()) for line in out.splitlines()}
    code, _, err = run(
        capsys, "--config", str(path), "--inside", "10.0.0.1/8", str(capture(tmp_path))
    )
    assert code == 1 and "--inside" in err and "host bits set" in err


def test_compare_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = config(tmp_path)
    packets = [(T0 + i * 0.1, syn(SUB4, MX4, dport=587, sport=41000 + i)) for i in range(10)]
    path = str(capture(tmp_path, packets))
    same = config(tmp_path, "same.toml")
    assert run(capsys, "--config", str(old), "--compare", str(same), path)[:2] == (
        0, "no difference: all 10 SYNs decided alike\n")  # fmt: skip
    faster = config(
        tmp_path, "new.toml", RULES.replace('"6/minute", burst = 5', '"60/minute", burst = 10')
    )
    code, out, _ = run(capsys, "--config", str(old), "--compare", str(faster), path)
    assert code == 3
    rows = [line.split() for line in out.splitlines()[1:6]]
    assert rows[0][1:] == [SUB4, MX4, "587", "submission", "reject", "submission", "allow"]
    assert len([line for line in out.splitlines() if "submission" in line]) == 5
    assert "5 of 10 SYNs decided differently" in out
    code, out, _ = run(
        capsys, "--config", str(old), "--compare", str(faster), "--format", "json", path
    )
    assert code == 3
    first = json.loads(out.splitlines()[0])
    assert first["old"] == {"rule": "submission", "verdict": "reject"}
    assert first["new"] == {"rule": "submission", "verdict": "allow"} and first["packet"] == 6
    code, _, err = run(capsys, "--config", str(old), "--compare", str(tmp_path / "none.toml"), path)
    assert code == 1 and "none.toml" in err


def test_a_damaged_capture_names_the_packet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = capture(tmp_path)
    data = bytearray(path.read_bytes())
    record = 24 + 16 + 54  # the second record's header
    data[record + 8 : record + 12] = b"\xff\xff\xff\x7f"
    path.write_bytes(bytes(data))
    for extra in ([], ["--compare", str(config(tmp_path, "other.toml"))]):
        code, _, err = run(capsys, "--config", str(config(tmp_path, f"c{len(extra)}.toml")),
                           *extra, str(path))  # fmt: skip
        assert code == 1
        assert err.startswith(f"{path}: packet 2: record length 2147483647 is larger")


def test_a_cut_last_packet_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = capture(tmp_path)
    path.write_bytes(path.read_bytes()[:-30])
    code, out, err = run(capsys, "--config", str(config(tmp_path)), str(path))
    assert code == 0
    assert err.startswith(f"{path}: warning: packet 12: cut short")
    assert "12 packets" in out


@pytest.mark.parametrize("content", [b"", b"\x00" * 100])
def test_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    path = tmp_path / "junk.pcap"
    path.write_bytes(content)
    code, _, err = run(capsys, "--config", str(config(tmp_path)), str(path))
    assert code == 1 and err.startswith(f"{path}: not a pcap or pcapng capture")


def test_progress_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_command, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(replay_command, "PROGRESS_CHECK", 4)
    code, _, err = run(
        capsys, "--config", str(config(tmp_path)), "--progress", str(capture(tmp_path))
    )
    assert code == 0
    assert err.splitlines()[0].startswith(f"{tmp_path / 'capture.pcap'}: ")
    assert "4 packets" in err and "8 packets" in err and "SYNs decided" in err
    code, _, err = run(
        capsys, "--config", str(config(tmp_path, "quiet.toml")), str(capture(tmp_path))
    )
    assert err == ""  # stderr is no terminal and no --progress


def test_an_unexpected_failure_is_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(replay_command.Replayer, "offer", broken)
    code, _, err = run(capsys, "--config", str(config(tmp_path)), str(capture(tmp_path)))
    assert code == 1 and "unexpected error: RuntimeError('boom')" in err


def test_a_broken_config_is_its_path_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[network]\ninternal = ["not-an-address"]\n')
    code, _, err = run(capsys, "--config", str(path), str(capture(tmp_path)))
    assert code == 1 and err.startswith(f"{path}:2:")


def test_scapy_is_imported_only_by_a_replay() -> None:
    code = ("import sys, portguard.cli.main, portguard.cli.replay, portguard.io.capture; "
            "print('scapy' in sys.modules)")  # fmt: skip
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert found.stdout.strip() == "False", found.stderr
