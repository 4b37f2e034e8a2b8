"""The CLI as an operator runs it: check, explain and argument errors (no root needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from portguard.cli.main import main
from portguard.io import policyfiles as loader
from portguard.shipped import CONFIG_PATH, RULES_DIR
from tests.unit.test_policyfiles import fake_dns

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken"
LOCATED = re.compile(r"^(?P<path>/\S+?)(:(?P<line>\d+)(:\d+)?)?: \S.*$")


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host names in the fixtures resolve through fake_dns, never the network."""
    monkeypatch.setattr(loader, "resolve_host", fake_dns)


def config_for(tmp_path: Path, rules: Path) -> Path:
    config = tmp_path / "portguard.toml"
    config.write_text(f'[network]\nwan = ["eth0"]\n[rules]\npaths = ["{rules}"]\n')
    return config


def test_shipped_files_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(config_for(tmp_path, RULES_DIR))]) == 0
    out = capsys.readouterr().out
    assert "ok; 5 rules" in out and "10-isp.toml" in out


def test_the_shipped_config_passes_once_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # as `make install` lays it out: the config beside rules.d holding the shipped rules
    installed = CONFIG_PATH.read_text().replace("/etc/portguard/rules.d", str(RULES_DIR))
    assert installed != CONFIG_PATH.read_text()
    config = tmp_path / "portguard.toml"
    config.write_text(installed)
    assert main(["check", "--config", str(config)]) == 0, capsys.readouterr().err


RULE_CASES = sorted(p for p in (BROKEN / "rules").iterdir() if p.is_dir())
CONFIG_CASES = sorted((BROKEN / "config").glob("*.toml"))


def assert_located_errors(err: str, under: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "check printed no error"
    for line in lines:
        match = LOCATED.match(line)
        assert match, f"not path:line: message: {line!r}"
        assert match["line"] or Path(match["path"]).is_dir(), f"a file error needs a line: {line}"
        assert Path(match["path"]).resolve().is_relative_to(under.resolve()), line


@pytest.mark.parametrize("case", RULE_CASES, ids=[p.name for p in RULE_CASES])
def test_broken_rule_files_exit_1_with_located_errors(
    case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(config_for(tmp_path, case))]) == 1
    assert_located_errors(capsys.readouterr().err, case)


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[p.stem for p in CONFIG_CASES])
def test_broken_configs_exit_1_with_located_errors(
    case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(case)]) == 1
    assert_located_errors(capsys.readouterr().err, case.parent)


def test_at_least_sixty_broken_rule_and_list_files() -> None:
    assert len(RULE_CASES) >= 60 and len(CONFIG_CASES) >= 20


SHADOWED = """
[[rule]]
id = "all-25"
dport = 25
action = "reject"

[[rule]]
id = "some-25"
src = "192.0.2.0/24"
dport = 25
action = "allow"
"""


def rules_dir(tmp_path: Path, text: str) -> Path:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "10-a.toml").write_text(text)
    return rules


def test_warnings_pass_unless_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_for(tmp_path, rules_dir(tmp_path, SHADOWED)))
    assert main(["check", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}/rules.d/10-a.toml:7:1: warning: rule 'some-25' can never match" in out
    assert "ok; 2 rules" in out and "1 warnings" in out
    assert main(["check", "--strict", "--config", config]) == 2


def test_check_json_of_a_valid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_for(tmp_path, rules_dir(tmp_path, SHADOWED)))
    assert main(["check", "--format", "json", "--config", config]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["errors"] == [] and report["rules"] == 2
    assert [(w["line"], w["col"]) for w in report["warnings"]] == [(7, 1)]
    assert len(report["policy_version"]) == 12
    assert main(["check", "--format", "json", "--strict", "--config", config]) == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_check_json_of_broken_rules_and_of_a_broken_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = BROKEN / "rules" / "set-cycle-two"
    assert main(["check", "--format", "json", "--config", str(config_for(tmp_path, case))]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["policy_version"] is None
    assert report["errors"] == [
        {
            "path": str(case / "10-a.toml"),
            "line": 7,
            "col": 9,
            "message": f"sets: cycle between sets: a -> b -> a (also at {case / '10-a.toml'}:4)",
        }
    ]
    broken_config = BROKEN / "config" / "port-zero.toml"
    assert main(["check", "--format", "json", "--config", str(broken_config)]) == 1
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert [(e["path"], e["line"], e["col"]) for e in errors] == [(str(broken_config), 2, 10)]


def test_check_shows_resolved_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = rules_dir(tmp_path, '[sets.relay]\nhosts = ["smtp.example.net"]\n')
    assert main(["check", "--config", str(config_for(tmp_path, rules))]) == 0
    assert "host smtp.example.net: 198.51.100.26, 2001:db8:25::26" in capsys.readouterr().out


def test_explain_names_the_deciding_rule_and_why_earlier_ones_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_for(tmp_path, RULES_DIR))
    argv = ["explain", "--config", config, "--src", "100.64.10.10", "--dst", "198.51.100.25",
            "--dport", "25"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "block-25" in out and "reject" in out
    assert "smarthosts" in out  # why the smarthost rule did not match
    assert "submission" in out


def test_explain_all_lists_every_matching_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_for(tmp_path, RULES_DIR))
    argv = ["explain", "--config", config, "--src", "100.64.10.10", "--dst", "198.51.100.26",
            "--dport", "25", "--all"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"4\. block-25 +match .*not reached: an earlier rule decides", out)
    assert re.search(r"5\. inbound-25-subscribers +no match", out)
    assert "decision: allow by rule 'smarthost'" in out


def test_explain_refuses_mixed_families(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_for(tmp_path, RULES_DIR))
    argv = ["explain", "--config", config, "--src", "100.64.10.10", "--dst", "2001:db8::1",
            "--dport", "25"]  # fmt: skip
    assert main(argv) == 2


def test_missing_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.toml"
    assert main(["check", "--config", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--src", "not-an-ip", "--dst", "192.0.2.1", "--dport", "25"])
    assert exit_info.value.code == 2


def test_check_warns_about_a_wan_interface_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "portguard.toml"
    config.write_text(f'[network]\nwan = ["eth0", "pgnosuch0"]\n[rules]\npaths = ["{RULES_DIR}"]\n')
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f'{config}:2:16: warning: wan: interface "pgnosuch0" does not exist' in out
    assert '"eth0"' not in out and "1 warnings" in out
    assert main(["check", "--strict", "--config", str(config)]) == 2


def test_check_refuses_a_symlinked_file_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "events.jsonl").symlink_to(tmp_path / "target")
    config = tmp_path / "portguard.toml"
    config.write_text(
        f'[rules]\npaths = ["{RULES_DIR}"]\n[log]\n'
        'outputs = [{ type = "stdout" },\n  { type = "file", path = "events.jsonl" }]\n'
    )
    assert main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{config}:5:") and "is a symbolic link" in err
    assert not (tmp_path / "target").exists()


def test_an_unexpected_error_in_check_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from portguard.core.policy import lint

    def broken(*args: object) -> object:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(lint, "lint", broken)
    assert main(["check", "--config", str(config_for(tmp_path, RULES_DIR))]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"{tmp_path}/portguard.toml: unexpected error while loading: ZeroDivisionError: a bug\n"
    )
