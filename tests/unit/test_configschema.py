"""The config's values: defaults, the per-source switch, limits, interface names, arrays kept as
tuples and paths resolved against the file (the path:line reporting of these errors is
test_config's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from portguard.config.model import Config, QueueConfig, RulesConfig
from portguard.config.schema import DEFAULT_PER_SOURCE_RATE, FileContext


def test_an_empty_file_takes_every_default() -> None:
    config = Config.for_file(Path("/etc/portguard/portguard.toml"))
    assert (config.queue.num, config.queue.fail_mode) == (0, "closed")
    assert config.hook.ports == (25, 465, 587)
    assert config.queue.per_source.rate == DEFAULT_PER_SOURCE_RATE
    assert [output.type for output in config.log.outputs] == ["stdout"]


def test_per_source_false_turns_the_limit_off_and_true_takes_the_defaults() -> None:
    assert QueueConfig.model_validate({"per_source": False}).per_source.rate == 0
    assert QueueConfig.model_validate({"per_source": True}).per_source == QueueConfig().per_source


def test_arrays_become_tuples_and_paths_resolve_against_the_file() -> None:
    data = {"paths": ["rules.d", "/srv/x.toml"]}
    rules = RulesConfig.model_validate(data, context=FileContext(Path("/etc/pg/pg.toml")))
    assert rules.paths == (Path("/etc/pg/rules.d"), Path("/srv/x.toml"))
    assert RulesConfig.model_validate(data).paths == (Path("rules.d"), Path("/srv/x.toml"))


@pytest.mark.parametrize(
    "data",
    [
        {"queue": {"workers": 0}},
        {"queue": {"per_source": {"rate": "200/minute"}}},
        {"queue": {"per_source": {"rate": 200}}},  # the file writes a rate as "200/second"
        {"network": {"wan": ["eth0:1"]}},
        {"log": {"outputs": [{"type": "file", "path": " "}]}},
        {"queue": {"unknown": 1}},
        {"path": "/etc/portguard/portguard.toml"},  # the file's own path is no key of it
    ],
)
def test_values_out_of_shape_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Config.model_validate(data, context=FileContext(Path("pg.toml")))
