"""The configured log outputs: the sink of each output type, TLS settings, a start refused on an
output that cannot be opened, and the writer over them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portguard.config.model import Config, LogConfig, Output
from portguard.core.errors import StartupError
from portguard.core.events.record import Observer, lifecycle_event
from portguard.log.outputs import make_sink, make_writer, open_sinks, tls_settings
from portguard.log.sinks import Sink

OBSERVER = Observer("gw-test", "0.0.0")


def with_outputs(*outputs: Output) -> Config:
    return Config.for_file(Path("portguard.toml"), log=LogConfig(outputs=outputs))


def test_each_output_type_gets_its_sink(tmp_path: Path) -> None:
    path = tmp_path / "events.cef"
    file = make_sink(Output(type="file", path=path, format="cef"))
    try:
        assert isinstance(file, Sink) and (file.name, file.format) == (f"file:{path}", "cef")
    finally:
        file.close()
    stdout = make_sink(Output(type="stdout", format="ocsf"))
    assert isinstance(stdout, Sink) and (stdout.name, stdout.format) == ("stdout", "ocsf")


def test_only_a_tls_address_takes_tls_settings() -> None:
    ca = Path("/etc/portguard/siem-ca.pem")
    settings = tls_settings(Output(type="syslog", address="tls://192.0.2.10:6514", ca=ca))
    assert settings is not None and settings.ca == ca
    assert tls_settings(Output(type="syslog", address="tcp://192.0.2.10:514", ca=ca)) is None


def test_an_output_that_cannot_be_opened_refuses_the_start(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    config = with_outputs(Output(type="file", path=tmp_path / "not-a-directory" / "events.jsonl"))
    with pytest.raises(StartupError, match="cannot open a log output"):
        open_sinks(config)


def test_the_writer_writes_to_every_configured_output(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    writer = make_writer(with_outputs(*(Output(type="file", path=p) for p in paths)), OBSERVER)
    writer.submit(lifecycle_event("start", "portguard started", OBSERVER, 1.0))
    writer.close()
    for path in paths:
        assert json.loads(path.read_text())["event"]["action"] == "start"
