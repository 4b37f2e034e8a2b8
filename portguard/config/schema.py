"""The values the daemon config takes: their kinds, limits and shared defaults, and the checks
of one value each (a number in range, an interface name, a rate, a path of the file).

`portguard.config.model` builds the config's tables from these types; the checks across keys
are in checks.py. A value read from the file arrives as TOML gives it (arrays as lists, paths
and rates as strings) and leaves as the model keeps it (tuples, resolved Paths, numbers).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from portguard.config.checks import MAX_QUEUE_NUM, MAX_WORKERS, listen_address_problem
from portguard.core.policy.addresses import parse_network

FailMode = Literal["open", "closed"]
Backend = Literal["auto", "nftables", "iptables"]
Chain = Literal["forward", "output"]
OutputType = Literal["stdout", "file", "syslog"]
LogFormat = Literal["ecs", "ocsf", "cef"]  # log/formats.py
LogLevel = Literal["debug", "info", "notice", "warning", "error"]  # log/sinks.py
Prefix = Literal["auto", "always", "never"]
DEFAULT_BUFFER = 65536  # events waiting for one output
MAX_BUFFER = 10_000_000
DEFAULT_PAGE_CACHE = 256  # MiB of a file output's end left in the page cache
MAX_PAGE_CACHE = 1 << 20

DEFAULT_RULES_PATH = Path("/etc/portguard/rules.d")
DEFAULT_RESOLVE_INTERVAL = 300
MAX_RESOLVE_INTERVAL = 7 * 86400
DEFAULT_CONTROL_SOCKET = Path("/run/portguard/control.sock")
DEFAULT_STATE_DIR = Path("/var/lib/portguard")  # systemd's StateDirectory=portguard
# Postfix's 100 delivery processes at ~0.5 s a delivery open < 200 connections a second
DEFAULT_PER_SOURCE_RATE = 200  # new hooked connections a second from one source
DEFAULT_DENY_CACHE = 10  # seconds a cached deny lives at most (one rotation of the deny cache)
MAX_DENY_CACHE = 3600
DEFAULT_PER_SOURCE_BURST = 1000
MAX_PER_SOURCE_RATE = 100_000  # io.hooks.backend.MAX_SOURCE_RATE: hashlimit is exact up to here
MAX_PER_SOURCE_BURST = 1_000_000
RATE = re.compile(r"^(?P<count>\d+)/(second|s)$")


@dataclass(frozen=True, slots=True)
class FileContext:
    """The validation context of a config file: relative paths in it resolve against ``base``."""

    path: Path

    @property
    def base(self) -> Path:
        return self.path.absolute().parent


def _within(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    return check


def within(low: int, high: int) -> AfterValidator:
    """An integer from ``low`` to ``high``: ``Annotated[int, within(1, 64)]``."""
    return AfterValidator(_within(low, high))


def _interface_name(name: str) -> str:
    """What the kernel takes as a device name (dev_valid_name): 1-15 characters, not "." or
    "..", no "/", ":", spaces or control characters."""
    bad = any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
    if not 1 <= len(name) <= 15 or bad or name in (".", ".."):
        raise ValueError(
            f'"{name}" is not an interface name (1-15 characters, no "/", ":" or spaces)'
        )
    return name


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _text(value: object) -> str:
    """``value`` when it is a string; else the error a strict ``str`` field gives."""
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return value


def _per_second(value: object) -> int:
    """A rate written as ``"200/second"`` (or ``"200/s"``): its count a second."""
    match = RATE.match(_text(value))
    if match is None:
        raise ValueError(f'"{value}" is not a rate per second (e.g. "200/second"; "0/second": off)')
    return _within(0, MAX_PER_SOURCE_RATE)(int(match["count"]))


def _file_path(value: object, info: ValidationInfo) -> object:
    """A path written in the file, resolved against the file's directory (``~`` expanded); a
    Path given in code is taken as it is."""
    if isinstance(value, Path):
        return value
    path = Path(_not_blank(_text(value))).expanduser()
    context = info.context
    return context.base / path if isinstance(context, FileContext) else path


def _array(value: object) -> object:
    """A TOML array (a list) kept as a tuple; anything else is left to the tuple check."""
    return tuple(value) if isinstance(value, list) else value


def _cidr(text: str) -> str:
    """An address or CIDR as the rule files take it (host bits must be zero)."""
    parse_network(text)  # raises ValueError with the operator's message
    return text


def _listen_address(address: str) -> str:
    problem = listen_address_problem(address)
    if problem:
        raise ValueError(problem)
    return address


ARRAY = BeforeValidator(_array)  # on a tuple field: the file's array
QueueNum = Annotated[int, within(0, MAX_QUEUE_NUM)]
Workers = Annotated[int, within(1, MAX_WORKERS)]
Port = Annotated[int, within(1, 65535)]
InterfaceName = Annotated[str, AfterValidator(_interface_name)]
Text = Annotated[str, AfterValidator(_not_blank)]
FilePath = Annotated[Path, BeforeValidator(_file_path)]
PerSecond = Annotated[int, BeforeValidator(_per_second)]
ListenAddress = Annotated[str, AfterValidator(_listen_address)]
Cidr = Annotated[str, AfterValidator(_cidr)]
