"""`portguard quarantine`: arguments checked before the daemon is asked, the requests it
sends, its answers printed, and `explain` naming a quarantine from the state directory."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from portguard.cli.main import main
from portguard.cli.quarantine import format_answer, parse_ports, request_for
from portguard.core.detect.quarantine import Quarantine, entry
from portguard.shipped import RULES_DIR


def config(tmp_path: Path) -> Path:
    path = tmp_path / "portguard.toml"
    path.write_text(f'[network]\nwan = ["eth0"]\n[rules]\npaths = ["{RULES_DIR}"]\n'
                    f'[daemon]\ncontrol_socket = "{tmp_path}/control.sock"\n'
                    f'state_dir = "{tmp_path}/state"\n')  # fmt: skip
    return path


def test_requests() -> None:
    assert request_for("list", None, None, None) == {"command": "quarantine-list"}
    assert request_for("release", "2001:db8:64:10::5", None, None) == {
        "command": "quarantine-release", "address": "2001:db8:64:10::5"}  # fmt: skip
    added = request_for("add", "100.64.10.10", "1h", [25])
    assert added == {"command": "quarantine-add", "address": "100.64.10.10", "for": "1h",
                     "ports": [25]}  # fmt: skip


@pytest.mark.parametrize(
    ("action", "address", "duration"),
    [("add", None, "1h"), ("add", "100.64.10.10", None), ("add", "100.64.10.10", "1 week"),
     ("release", "100.64.0.0/10", None), ("release", "mail.example", None)],
)  # fmt: skip
def test_bad_arguments_exit_2_without_asking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, address: str | None,
    duration: str | None,
) -> None:  # fmt: skip
    argv = [
        "quarantine",
        action,
        *([address] if address else []),
        "--config",
        str(config(tmp_path)),
    ]
    argv += ["--for", duration] if duration else []
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("portguard: ")


def test_ports() -> None:
    assert parse_ports("25,465, 587") == [25, 465, 587]
    for bad in ("", "25,x", "0", "70000"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def test_no_daemon_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quarantine", "list", "--config", str(config(tmp_path))]) == 3
    assert "no daemon listens" in capsys.readouterr().err


def test_answers_as_text() -> None:
    found = entry((4, 0x64400A0A), "fanout", 0.0, 60.0, [25, 587]).fields()
    assert format_answer({"ok": True, "quarantined": []}) == ["no source is quarantined"]
    lines = format_answer({"ok": True, "quarantined": [found]})
    assert lines[1].split() == ["100.64.10.10", "fanout", "1970-01-01T00:01:00.000000Z", "25,587"]
    assert format_answer({"ok": True, "released": [found]}) == ["released 100.64.10.10"]
    assert format_answer({"ok": True, "released": []}) == ["not quarantined"]


def test_explain_names_a_quarantine_of_the_state_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    argv = ["explain", "--config", str(path), "--src", "100.64.10.10", "--dst", "198.51.100.26",
            "--dport", "25"]  # fmt: skip
    assert main(argv) == 0
    assert "quarantine" not in capsys.readouterr().out, "no file: nobody is quarantined"
    table = Quarantine()
    table.add(entry((4, 0x64400A0A), "fanout", 0.0, 4e9, [25]))
    (tmp_path / "state").mkdir(mode=0o750)
    (tmp_path / "state" / "quarantine.json").write_bytes(orjson.dumps(table.to_dict()))
    (tmp_path / "state" / "quarantine.json").chmod(0o600)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("decided by quarantine:fanout (reject): 100.64.10.10 quarantined by "
                          "fanout until 2096-")  # fmt: skip
    assert "smarthost" in out
    (tmp_path / "state" / "quarantine-1.json").write_text("{broken")
    (tmp_path / "state" / "quarantine-1.json").chmod(0o600)
    argv[4] = "100.64.10.11"
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("quarantine unknown: cannot read ")
