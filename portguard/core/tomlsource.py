"""A parsed TOML file that can say where its values are, and pydantic errors as ``path:line:``.

Shared by the daemon config and the rule files: parse with tomllib, scan positions with
SourceMap, validate the shape with strict pydantic models, and turn every validation error into a
Problem on the line of the offending key or array element, in the operator's words.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from portguard.core.errors import Problem, toml_syntax_problem
from portguard.core.sourcemap import KeyPath, SourceMap

M = typing.TypeVar("M", bound=BaseModel)

MAX_NESTING = 32  # levels of tables, arrays and dotted keys (a rule file needs about 5)
MIB = 1 << 20


class Spec(BaseModel):
    """Base of the file-shape models: strict types, unknown keys are errors, read-only."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


@dataclass(frozen=True)
class TomlSource:
    """One TOML file's text, its parsed data, and the positions of its keys."""

    path: Path
    text: str
    data: dict[str, Any]

    @functools.cached_property
    def positions(self) -> SourceMap:
        """Scanned on first use: only a file with a problem needs it."""
        return SourceMap.scan(self.text)

    def problem(self, key: KeyPath, message: str, kind: str | None = None) -> Problem:
        """A Problem at the line and column of ``key`` (or of its nearest written parent)."""
        line, col = self.positions.locate(key)
        return Problem(self.path, line, message, col, kind)

    def where(self, key: KeyPath) -> str:
        """``path:line`` of ``key``, to point at an earlier definition."""
        return f"{self.path}:{self.positions.line(key)}"


class TextError(ValueError):
    """A file that is no text portguard reads: too large, not a regular file, not UTF-8."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.message, self.line, self.col = message, line, col

    def problem(self, path: Path) -> Problem:
        return Problem(path, self.line, self.message, self.col)


def parse_toml(path: Path, text: str) -> TomlSource | Problem:
    """Parse TOML text; a syntax error becomes a Problem with tomllib's line and column, and
    nesting deeper than MAX_NESTING a Problem where it passes the limit (tomllib recurses: a
    file of 10,000 nested arrays would end in a RecursionError)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return toml_syntax_problem(path, text, error)
    except RecursionError:
        return nesting_problem(path, text)
    if too_deep(data, MAX_NESTING):
        return nesting_problem(path, text)
    return TomlSource(path, text, data)


def nesting_problem(path: Path, text: str) -> Problem:
    line, col = SourceMap.deep_point(text, MAX_NESTING) or (None, None)
    message = f"tables and arrays nest deeper than {MAX_NESTING} levels"
    return Problem(path, line, message, col)


def too_deep(data: dict[str, Any], limit: int) -> bool:
    """Whether some value lies more than ``limit`` keys and indexes deep (without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if value and depth >= limit:  # its members lie at depth + 1
            return True
        children = value.values() if isinstance(value, dict) else value
        stack += [(child, depth + 1) for child in children if isinstance(child, dict | list)]
    return False


def validate(source: TomlSource, model: type[M], context: object = None) -> M | list[Problem]:
    """Validate the whole document against ``model`` (its validators get ``context``); on
    failure, every error located."""
    try:
        return model.model_validate(source.data, context=context)
    except ValidationError as error:
        return validation_problems(error, source, model)


def validation_problems(
    error: ValidationError, source: TomlSource, model: type[BaseModel]
) -> list[Problem]:
    problems = []
    for detail in error.errors():
        key = data_path(detail["loc"], source.data)
        problems.append(source.problem(key, describe(detail, key, model)))
    return problems


def data_path(loc: Sequence[str | int], data: Any) -> KeyPath:
    """The part of a pydantic ``loc`` that indexes into the data (drops union/validator tags)."""
    path: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        if _indexes(current, part):
            current = current[part]
        elif not (index == len(loc) - 1 and isinstance(part, str) and isinstance(current, dict)):
            continue  # a tag pydantic adds (union member, validator); a missing key is kept
        path.append(part)
    return tuple(path)


def _indexes(container: Any, part: str | int) -> bool:
    if isinstance(container, dict):
        return isinstance(part, str) and part in container
    if isinstance(container, list):
        return isinstance(part, int) and 0 <= part < len(container)
    return False


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def describe(detail: ErrorDetails, key: KeyPath, model: type[BaseModel]) -> str:
    """One validation error in the operator's words."""
    kind = detail["type"]
    name = _key_name(key)
    if kind == "extra_forbidden":
        return f"unknown key '{key[-1]}'{_suggestion(str(key[-1]), model, key[:-1])}"
    if kind == "missing":
        return f"missing required key '{key[-1]}'"
    subject = f"{name}: entry" if key and isinstance(key[-1], int) else f"{name}:"
    if kind in ("list_type", "tuple_type") and isinstance(detail["input"], dict):
        return f"{subject} must be an array of tables (write [[{name}]]), not a table"
    if kind in _EXPECTED:
        return f"{subject} must be {_EXPECTED[kind]}, not {toml_type(detail['input'])}"
    ctx = detail.get("ctx") or {}
    if kind == "literal_error":
        return f"{subject} must be {ctx['expected']}, not {toml_value(detail['input'])}"
    if kind == "value_error":
        return f"{name}: {ctx['error']}"
    return f"{name}: {detail['msg']}"


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, with an article."""
    names: list[tuple[type, str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        (datetime, "a datetime"),
        (date, "a date"),
        (time, "a time"),
    ]
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def toml_value(value: object) -> str:
    """A parsed value written as TOML would (strings quoted, booleans in lower case)."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _key_name(key: KeyPath) -> str:
    names = [part for part in key if isinstance(part, str)]
    return names[-1] if names else "document"


def _suggestion(unknown: str, model: type[BaseModel], parent: KeyPath) -> str:
    allowed = _keys_at(model, parent)
    if not allowed:
        return ""
    close = difflib.get_close_matches(unknown, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known keys: {', '.join(allowed)})"


def _keys_at(model: type[BaseModel], path: KeyPath) -> list[str]:
    """The field names of the model that validates the table at ``path``."""
    current: Any = model
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field else None
        else:
            args = [arg for arg in typing.get_args(current) if arg is not Ellipsis]
            current = args[-1] if args else None  # list[X], tuple[X, ...]: X
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] around a type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation
