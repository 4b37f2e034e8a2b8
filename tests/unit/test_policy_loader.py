"""Loading rule files from disk: every broken fixture fails with its exact located message."""

from __future__ import annotations

from pathlib import Path

import pytest

from portguard.errors import PolicyError
from portguard.policy.loader import load_ruleset, rule_files

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken" / "rules"

# case directory -> (file in the case, "line" or "line:column" or None, message)
CASES: dict[str, tuple[str, str | None, str]] = {
    "toml-syntax": ("10-a.toml", "3:6", "TOML syntax error: Invalid value"),
    "toml-duplicate-key": ("10-a.toml", "5:18", "TOML syntax error: Cannot overwrite a value"),
    "unknown-top-level-key": ("10-a.toml", "2", "unknown key 'rules' (did you mean 'rule'?)"),
    "unknown-rule-key": ("10-a.toml", "10", "unknown key 'limit' (known keys: id, description,"),
    "unknown-set-key": ("10-a.toml", "3", "unknown key 'cidr' (did you mean 'cidrs'?)"),
    "unknown-default-key": ("10-a.toml", "4", "unknown key 'log' (known keys: action)"),
    "dport-float": ("10-a.toml", "4", 'dport: 25.0 is a float, not a port or a "from-to" range'),
    "enabled-string": ("10-a.toml", "5", "enabled: must be true or false, not a string"),
    "description-integer": ("10-a.toml", "4", "description: must be a string, not an integer"),
    "duplicate-id-two-files": (
        "20-b.toml",
        "7",
        "duplicate rule id 'block-25' (first defined at {case}/10-a.toml:3)",
    ),
    "unknown-set": (
        "10-a.toml",
        "6",
        "src: unknown set 'subscriber' (did you mean 'subscribers'?)",
    ),
    "bad-cidr-in-set": (
        "10-a.toml",
        "5",
        'cidrs: "10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)',
    ),
    "bad-address-in-src-list": ("10-a.toml", "6", 'src: "300.1.2.3" is not a valid IP address'),
    "bad-cidr-in-list-file": (
        "lists/business.txt",
        "4",
        '"198.51.100.0/33": the prefix length must be a number from 0 to 32',
    ),
    "two-entries-on-a-list-line": (
        "business.txt",
        "1",
        '"203.0.113.0/24 198.51.100.0/24": write one address or CIDR a line',
    ),
    "missing-list-file": ("10-a.toml", "4", 'files: list file "lists/nothere.txt" not found'),
    "port-range-reversed": (
        "10-a.toml",
        "3",
        'dport: "2000-1000": the range starts above its end (2000 > 1000)',
    ),
    "port-zero": ("10-a.toml", "3", "dport: port 0 is out of range 1-65535"),
    "port-range-too-high": ("10-a.toml", "3", "dport: port 70000 is out of range 1-65535"),
    "port-as-string": ("10-a.toml", "3", 'dport: "25" is a string: write a single port as an'),
    "bad-direction": (
        "10-a.toml",
        "3",
        "direction: must be 'outbound', 'inbound' or 'any', not \"egress\"",
    ),
    "bad-action": (
        "10-a.toml",
        "3",
        "action: must be 'allow', 'drop', 'reject' or 'log', not \"deny\"",
    ),
    "missing-action": ("10-a.toml", "1", "missing required key 'action'"),
    "missing-id": ("10-a.toml", "1", "missing required key 'id'"),
    "bad-rule-id": ("10-a.toml", "2", 'id: "block 25" may hold only letters, digits'),
    "reserved-rule-id": ("10-a.toml", "2", 'id: "default" is reserved for the default action'),
    "duplicate-set-two-files": (
        "20-b.toml",
        "2",
        "set 'subscribers' is already defined at {case}/10-a.toml:1",
    ),
    "empty-set": ("10-a.toml", "2", "set 'nobody' is empty: give it 'cidrs' or 'files'"),
    "bad-set-name": ("10-a.toml", "1", 'set name "1st-customers" must start with a letter'),
    "dns-name-in-dst": ("10-a.toml", "3", 'dst: "mail.example.com" is not a set name'),
    "empty-src-list": ("10-a.toml", "3", "src: must not be an empty list"),
    "default-twice": ("20-b.toml", "5", "[default] is already set at {case}/10-a.toml:1"),
    "set-not-a-table": ("10-a.toml", "1", "sets: must be a table, not an array"),
    "no-rule-files": ("", None, "no rule files (*.toml) in this directory"),
}


def expected_message(case: Path, file: str, line: str | None, message: str) -> str:
    where = str(case / file) if file else str(case)
    if line is not None:
        where += f":{line}"
    return f"{where}: {message.format(case=case)}"


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in BROKEN.iterdir()) == sorted(CASES)
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_fixture_reports_located_message(name: str) -> None:
    case = BROKEN / name
    file, line, message = CASES[name]
    with pytest.raises(PolicyError) as caught:
        load_ruleset([case])
    wanted = expected_message(case, file, line, message)
    assert any(wanted in m for m in caught.value.messages), caught.value.messages


def test_errors_in_several_files_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_text('[[rule]]\nid = "a"\naction = "deny"\n')
    (tmp_path / "20-b.toml").write_text('[[rule]]\nid = "b"\ndport = 0\naction = "allow"\n')
    (tmp_path / "30-c.toml").write_text("[[rule]\n")
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path])
    files = [m.split(":", 1)[0] for m in caught.value.messages]
    assert files == [str(tmp_path / n) for n in ("10-a.toml", "20-b.toml", "30-c.toml")]


def test_directory_files_load_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "20-late.toml").write_text('[[rule]]\nid = "late"\naction = "drop"\n')
    (tmp_path / "10-early.toml").write_text('[[rule]]\nid = "early"\naction = "allow"\n')
    (tmp_path / ".hidden.toml").write_text("not toml at all [")
    (tmp_path / "notes.txt").write_text("not a rule file")
    ruleset = load_ruleset([tmp_path])
    assert [rule.id for rule in ruleset.rules] == ["early", "late"]
    assert [rule.ruleset for rule in ruleset.rules] == ["10-early.toml", "20-late.toml"]


def test_paths_keep_their_order_and_a_file_counts_once(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "50-x.toml").write_text('[[rule]]\nid = "x"\naction = "allow"\n')
    (second / "10-y.toml").write_text('[[rule]]\nid = "y"\naction = "allow"\n')
    files, problems = rule_files([second, first, first / "50-x.toml"])
    assert problems == []
    assert files == [second / "10-y.toml", first / "50-x.toml"]
    assert [rule.id for rule in load_ruleset([second, first]).rules] == ["y", "x"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path / "nothere"])
    assert caught.value.messages == [f"{tmp_path / 'nothere'}: no such file or directory"]


def test_no_paths_is_an_error() -> None:
    with pytest.raises(PolicyError, match="no rule paths given"):
        load_ruleset([])


def test_undecodable_rule_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_bytes(b"\xff\xfe[[rule]]")
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        load_ruleset([tmp_path])


def test_list_file_is_read_relative_to_the_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.d"
    (rules / "lists").mkdir(parents=True)
    (rules / "10-a.toml").write_text(
        '[sets.business]\nfiles = ["lists/b.txt"]\n\n'
        '[[rule]]\nid = "b"\nsrc = "business"\naction = "allow"\n'
    )
    (rules / "lists" / "b.txt").write_text("# customers\n\n203.0.113.0/24  # acme\n")
    ruleset = load_ruleset([rules])
    assert ruleset.sources == (rules / "10-a.toml", rules / "lists" / "b.txt")
    assert ruleset.rules[0].src is not None
    assert ruleset.rules[0].src.contains(4, 0xCB007105)  # 203.0.113.5
