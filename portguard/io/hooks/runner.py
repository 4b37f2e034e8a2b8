"""Hook commands as data: every backend command goes through a ``Runner`` (argv, stdin ->
``CommandResult``); ``run_command`` is the real one, tests pass a recording fake."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from portguard.io.hooks.backend import HookError

COMMAND_NOT_FOUND: Final = 127
COMMAND_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], str | None], CommandResult]


def run_command(argv: Sequence[str], stdin: str | None = None) -> CommandResult:
    """Run one command with captured output; a missing program gives exit code 127."""
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError as error:
        return CommandResult(tuple(argv), COMMAND_NOT_FOUND, "", str(error))
    except subprocess.TimeoutExpired as error:
        raise HookError(f"{' '.join(argv)}: no answer in {COMMAND_TIMEOUT:g} s") from error
    return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def succeeded(result: CommandResult) -> str:
    """The command's stdout, or HookError naming the command and what it printed."""
    if result.returncode != 0:
        stderr = result.stderr.strip() or result.stdout.strip() or "no output"
        raise HookError(f"{' '.join(result.argv)} failed (exit {result.returncode}): {stderr}")
    return result.stdout


def checked(runner: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a command through ``runner``; its stdout, or HookError naming command and stderr."""
    return succeeded(runner(argv, stdin))
