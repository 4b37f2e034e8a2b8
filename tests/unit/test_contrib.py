"""The shipped collector and rotation configs in contrib/, checked with the real tools.

logrotate parses the shipped config (`-d`) and its postrotate script runs under sh;
`rsyslogd -N1` validates the rsyslog config (the real one when omelasticsearch is installed,
else with the Elasticsearch action swapped for omfile), and a real rsyslogd runs its ruleset
on real portguard events. Vector's TOML and Filebeat's YAML are parsed and their wiring
checked (neither program is packaged for Debian, so neither runs here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portguard.core.events.record import Observer, lifecycle_event
from portguard.log import formats
from portguard.log.syslog import syslog_frame

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
LOGROTATE = CONTRIB / "logrotate" / "portguard"
RSYSLOG = CONTRIB / "rsyslog" / "portguard.conf"
VECTOR = CONTRIB / "vector" / "portguard.toml"
FILEBEAT = CONTRIB / "filebeat" / "portguard.yml"
RSYSLOG_MODULES = Path("/usr/lib/x86_64-linux-gnu/rsyslog")

SIGNAL = "systemctl kill --kill-whom=all --signal=USR1 portguard.service"
SYSTEMD_RUNNING = "/run/systemd/system"


def need(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip(f"{program} is not installed (apt-get install {program})")
    return found


# --- logrotate ----------------------------------------------------------------------------------


def logrotate_directives(text: str) -> tuple[str, list[str], str]:
    """(the path pattern, the directives outside scripts, the postrotate script)."""
    match = re.search(r"(?ms)^(\S+) \{\n(.*?)^\}", text)
    assert match is not None, "no `path { ... }` stanza"
    body = match[2]
    script = re.search(r"(?ms)^\s*postrotate\n(.*?)^\s*endscript\n", body)
    assert script is not None, "no postrotate ... endscript"
    outside = body.replace(script[0], "")
    lines = [line.strip() for line in outside.splitlines()]
    return match[1], [line for line in lines if line and not line.startswith("#")], script[1]


def test_logrotate_config_rotates_by_rename_and_signals_the_service() -> None:
    path, directives, script = logrotate_directives(LOGROTATE.read_text())
    assert path == "/var/log/portguard/*.log"
    for wanted in ("missingok", "notifempty", "compress", "delaycompress", "sharedscripts"):
        assert wanted in directives
    assert "create 0640 portguard adm" in directives and "su portguard adm" in directives
    assert not any("copytruncate" in line for line in directives)  # it loses lines
    rotate = [int(line.split()[1]) for line in directives if line.startswith("rotate ")]
    assert rotate and rotate[0] >= 7
    assert SIGNAL in script


def test_logrotate_parses_the_shipped_config(tmp_path: Path) -> None:
    program = need("logrotate")
    config = tmp_path / "portguard"
    # the `portguard` user exists only where the package is installed: name root instead
    # (the directives themselves are checked above)
    config.write_text(LOGROTATE.read_text().replace("portguard adm", "root adm"))
    config.chmod(0o644)  # logrotate ignores group- or world-writable configs
    proc = subprocess.run(
        [program, "-d", "-s", str(tmp_path / "state"), str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower(), proc.stderr
    assert "rotating pattern: /var/log/portguard/*.log" in proc.stderr


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> Path:
    """A `systemctl` first on PATH that records its arguments and fails, as for a stopped unit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\necho oops >&2\nexit 1\n')
    fake.chmod(0o755)
    return tmp_path / "calls"


def run_postrotate(script: str, systemd_dir: Path, calls: Path) -> subprocess.CompletedProcess[str]:
    assert script.count(SYSTEMD_RUNNING) == 1, "postrotate must test whether systemd runs"
    script = script.replace(SYSTEMD_RUNNING, str(systemd_dir))
    env = {"PATH": f"{calls.parent / 'bin'}:/usr/bin:/bin"}
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=env, timeout=10, check=False
    )


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "no-systemd"])
def test_postrotate_signals_every_process_and_stays_quiet(
    tmp_path: Path, fake_systemctl: Path, systemd: bool
) -> None:
    _, _, script = logrotate_directives(LOGROTATE.read_text())
    systemd_dir = tmp_path / "run-systemd-system"
    if systemd:
        systemd_dir.mkdir()
    proc = run_postrotate(script, systemd_dir, fake_systemctl)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    calls = fake_systemctl.read_text().splitlines() if fake_systemctl.exists() else []
    assert calls == (["kill --kill-whom=all --signal=USR1 portguard.service"] if systemd else [])


# --- rsyslog ------------------------------------------------------------------------------------

ES_ACTION = re.compile(r'(?s)action\(type="omelasticsearch".*?\)\n')
IMFILE_BLOCK = re.compile(r"(?ms)^# --- imfile.*?\n(.*?)^# --- end imfile\n")
TLS_INPUT = re.compile(r'(?s)module\(load="imtcp"\)\ninput\(type="imtcp".*?\)\n')


def rsyslog_variant(
    tmp_path: Path, omfile: dict[str, Path] | None = None, imfile: bool = False
) -> Path:
    """The shipped config with its TLS and CA files in `tmp_path` (rsyslogd -N1 opens them);
    `omfile` swaps the Elasticsearch action for omfile actions {template: file}."""
    text = RSYSLOG.read_text()
    for name in ("ca.pem", "collector.pem", "collector.key", "elastic-ca.pem"):
        assert f"/etc/rsyslog.d/tls/{name}" in text
        (tmp_path / name).write_text("")
    text = text.replace("/etc/rsyslog.d/tls/", f"{tmp_path}/")
    if omfile:
        text = swap_elasticsearch(text, omfile)
    if imfile:
        text = f'global(workDirectory="{tmp_path}")\n' + uncomment_imfile(text)
    config = tmp_path / "portguard.conf"
    config.write_text(text)
    return config


def swap_elasticsearch(text: str, outputs: dict[str, Path]) -> str:
    """The Elasticsearch action as omfile actions writing the output of its templates."""
    assert len(ES_ACTION.findall(text)) == 1 and text.count('module(load="omelasticsearch")') == 1
    action = ES_ACTION.findall(text)[0]
    for template in outputs:  # the templates the Elasticsearch action really uses
        assert re.search(rf'(template|searchIndex|bulkid)="{template}"', action), template
    actions = "".join(
        f'action(type="omfile" file="{out}" template="{template}")\n'
        for template, out in outputs.items()
    )
    text = ES_ACTION.sub(lambda _m: actions, text)
    return text.replace('module(load="omelasticsearch")\n', "")


def uncomment_imfile(text: str) -> str:
    block = IMFILE_BLOCK.search(text)
    assert block is not None, "the commented imfile block is missing"
    lines = [line for line in block[1].splitlines() if not line.startswith("# ---")]
    active = "".join(line.removeprefix("# ") + "\n" for line in lines)
    return text.replace(block[1], active)


def rsyslog_check(config: Path) -> None:
    proc = subprocess.run(
        [need("rsyslogd"), "-N1", "-f", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower(), proc.stderr


@pytest.mark.parametrize("imfile", [False, True], ids=["tls-input", "imfile-input"])
def test_rsyslog_config_validates(tmp_path: Path, imfile: bool) -> None:
    if not (RSYSLOG_MODULES / "omelasticsearch.so").exists():
        pytest.skip("omelasticsearch is not installed (apt-get install rsyslog-elasticsearch)")
    rsyslog_check(rsyslog_variant(tmp_path, imfile=imfile))


@pytest.mark.parametrize("imfile", [False, True], ids=["tls-input", "imfile-input"])
def test_rsyslog_config_with_omfile_output_validates(tmp_path: Path, imfile: bool) -> None:
    omfile = {"portguard-document": tmp_path / "es.out"}
    rsyslog_check(rsyslog_variant(tmp_path, omfile=omfile, imfile=imfile))


def test_rsyslog_config_validation_catches_a_typo(tmp_path: Path) -> None:
    config = rsyslog_variant(tmp_path, omfile={"portguard-document": tmp_path / "es.out"})
    config.write_text(config.read_text().replace('cookie=""', 'cookies=""'))
    with pytest.raises(AssertionError, match="cookies"):
        rsyslog_check(config)


OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.123456


def sample_events() -> list[dict[str, Any]]:
    """A decision and a lifecycle event, before rendering."""
    decision = {
        "@timestamp": "2026-11-27T17:00:00.123456Z",
        "ecs": {"version": "8.11.0"},
        "log": {"level": "notice"},
        "event": {"kind": "event", "category": ["network"], "type": ["connection", "denied"],
                  "action": "reject", "outcome": "success", "dataset": "portguard.decision"},
        "rule": {"id": "block-25", "ruleset": "10-isp.toml",
                 "description": "subscribers may not send mail directly — M3AAWG \"Port 25\""},
        "source": {"ip": "100.64.10.10", "port": 40312},
        "destination": {"ip": "2001:db8:25::25", "port": 25},
        "network": {"transport": "tcp", "iana_number": "6", "type": "ipv6",
                    "direction": "outbound"},
        "observer": OBSERVER.fields(),
        "portguard": {"flow_id": "0-6747a1f0-2a", "reason": "matched rule 'block-25'",
                      "policy_version": "3f9c1e0a7b2d"},
    }  # fmt: skip
    return [decision, lifecycle_event("start", "portguard started", OBSERVER, NOW, queue=0)]


def concatenated_json(text: str) -> list[Any]:
    """JSON values written back to back (a template without a newline, as Elasticsearch's)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


OUTPUTS = {
    "portguard-document": "docs.out",
    "portguard-index": "index.out",
    "portguard-id": "id.out",
}


def functional_config(tmp_path: Path, logs: Path, frames: Path) -> Path:
    """Shipped ruleset and templates; input: the shipped imfile block on `logs` plus an
    imfile of RFC 5424 frames (what the TLS input delivers); no network listener. What the
    Elasticsearch action would send goes to the OUTPUTS files, one per template."""
    outputs = {template: tmp_path / name for template, name in OUTPUTS.items()}
    config = rsyslog_variant(tmp_path, omfile=outputs, imfile=True)
    text = config.read_text()
    assert len(TLS_INPUT.findall(text)) == 1, "the TLS input changed shape"
    text = TLS_INPUT.sub("", text).replace("/var/log/portguard/*.log", f"{logs}/*.log")
    text = text.replace("/var/log/portguard-unparsed.log", str(tmp_path / "unparsed.log"))
    text += (
        f'input(type="imfile" File="{frames}" Tag="syslog" ruleset="portguard" needParse="on" '
        'addMetadata="off")\n'
    )
    config.write_text(text)
    return config


@pytest.fixture
def rsyslogd() -> Iterator[list[subprocess.Popen[bytes]]]:
    running: list[subprocess.Popen[bytes]] = []
    yield running
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def test_rsyslog_ruleset_ships_each_event_unchanged(
    tmp_path: Path, rsyslogd: list[subprocess.Popen[bytes]]
) -> None:
    events = sample_events()
    logs, frames, out = tmp_path / "portguard", tmp_path / "frames.txt", tmp_path / "docs.out"
    logs.mkdir()
    lines = [formats.render(event, "ecs") for event in events]  # the file output's lines
    cef = formats.render(events[1], "cef")  # a sink in another format: not JSON
    (logs / "decisions.log").write_bytes(b"".join(line + b"\n" for line in [*lines, cef]))
    frames.write_bytes(b"".join(syslog_frame(event, "gw1", 4242) + b"\n" for event in events))
    config = functional_config(tmp_path, logs, frames)
    argv = [need("rsyslogd"), "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")]
    rsyslogd.append(subprocess.Popen(argv, stderr=subprocess.PIPE))
    documents = wait_for_documents(out, 2 * len(events), rsyslogd[0])
    expected = [json.loads(line) for line in lines] * 2  # from the file and from syslog
    assert Counter(map(canonical, documents)) == Counter(map(canonical, expected))
    assert (tmp_path / "unparsed.log").read_text().count("CEF:0|portguard") == 1
    indices = re.findall(r"logs-(.*?)-default", (tmp_path / "index.out").read_text())
    assert Counter(indices) == Counter(event["event"]["dataset"] for event in expected)
    ids = re.findall(r"[0-9A-F]{32}", (tmp_path / "id.out").read_text())
    assert len(set(ids)) == len(expected)  # one fresh document id per message


def wait_for_documents(out: Path, count: int, proc: subprocess.Popen[bytes]) -> list[Any]:
    deadline = time.monotonic() + 20
    documents: list[Any] = []
    while time.monotonic() < deadline and len(documents) < count:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.1)
        documents = concatenated_json(out.read_text()) if out.exists() else []
    assert len(documents) == count, documents
    return documents


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def test_rsyslog_elasticsearch_action_never_drops() -> None:
    """Data streams take `create` only; a disk-assisted queue retries for ever."""
    (action,) = ES_ACTION.findall(RSYSLOG.read_text())
    for setting in ('writeoperation="create"', 'dynSearchIndex="on"', 'dynbulkid="on"',
                    'action.resumeRetryCount="-1"', 'queue.saveOnShutdown="on"'):  # fmt: skip
        assert setting in action


# --- Vector -------------------------------------------------------------------------------------


def component_ids(config: dict[str, Any]) -> set[str]:
    ids = set(config.get("sources", {})) | set(config.get("transforms", {}))
    remaps = config.get("transforms", {}).items()
    return ids | {f"{name}.dropped" for name, t in remaps if t.get("reroute_dropped")}


def check_vector_wiring(config: dict[str, Any]) -> None:
    known = component_ids(config)
    for kind in ("transforms", "sinks"):
        for name, component in config.get(kind, {}).items():
            missing = set(component["inputs"]) - known
            assert not missing, f"{kind}.{name} reads from undefined {missing}"


def test_vector_config_parses_and_is_wired() -> None:
    config = tomllib.loads(VECTOR.read_text())
    check_vector_wiring(config)
    source = config["sources"]["portguard_file"]
    assert source["type"] == "file" and "/var/log/portguard/*.log" in source["include"]
    assert "parse_json!" in config["transforms"]["portguard_events"]["source"]
    sink = config["sinks"]["elasticsearch"]
    assert (sink["type"], sink["mode"]) == ("elasticsearch", "data_stream")
    assert sink["data_stream"] == {"type": "logs", "dataset": "{{ event.dataset }}",
                                   "namespace": "default"}  # fmt: skip
    assert sink["acknowledgements"]["enabled"] is True


def test_vector_splunk_note_is_a_working_config() -> None:
    """The commented Splunk HEC block, uncommented, parses and is wired to the events."""
    text = VECTOR.read_text()
    start = text.index("# [transforms.portguard_splunk]")
    block = [line.removeprefix("#").removeprefix(" ") for line in text[start:].splitlines()]
    config = tomllib.loads(text[:start] + "\n".join(block) + "\n")
    check_vector_wiring(config)
    assert config["sinks"]["splunk"]["type"] == "splunk_hec_logs"


# --- Filebeat -----------------------------------------------------------------------------------

LOAD_YAML = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"


def load_yaml(path: Path) -> Any:
    """PyYAML from this interpreter, else from Debian's python3-yaml."""
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        proc = subprocess.run(
            [python, "-c", LOAD_YAML, str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        if "No module named 'yaml'" not in proc.stderr:
            raise AssertionError(proc.stderr)
    pytest.skip("no PyYAML (apt-get install python3-yaml)")


def test_filebeat_config_parses_with_ndjson_at_the_root() -> None:
    config = load_yaml(FILEBEAT)
    (stream,) = config["filebeat.inputs"]
    assert stream["type"] == "filestream" and stream["id"]
    assert "/var/log/portguard/*.log" in stream["paths"]
    (parser,) = stream["parsers"]
    assert parser["ndjson"] == {"target": "", "overwrite_keys": True, "add_error_key": True}
    output = config["output.elasticsearch"]
    assert output["index"] == "logs-%{[event.dataset]}-default"
    assert config["setup.template.name"] and config["setup.template.pattern"]
