"""The config file's shape: defaults, the per-source switch, limits and interface names
(the path:line reporting of these errors is test_config's)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from portguard.config.schema import DEFAULT_PER_SOURCE_RATE, ConfigSpec, QueueSpec


def test_an_empty_file_takes_every_default() -> None:
    spec = ConfigSpec.model_validate({})
    assert (spec.queue.num, spec.queue.fail_mode, spec.hook.ports) == (0, "closed", [25, 465, 587])
    assert spec.queue.per_source.rate == f"{DEFAULT_PER_SOURCE_RATE}/second"
    assert [output.type for output in spec.log.outputs] == ["stdout"]


def test_per_source_false_turns_the_limit_off_and_true_takes_the_defaults() -> None:
    assert QueueSpec.model_validate({"per_source": False}).per_source.rate == "0/second"
    assert QueueSpec.model_validate({"per_source": True}).per_source == QueueSpec().per_source


@pytest.mark.parametrize(
    "data",
    [
        {"queue": {"workers": 0}},
        {"queue": {"per_source": {"rate": "200/minute"}}},
        {"network": {"wan": ["eth0:1"]}},
        {"log": {"outputs": [{"type": "file", "path": " "}]}},
        {"queue": {"unknown": 1}},
    ],
)
def test_values_out_of_shape_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ConfigSpec.model_validate(data)
