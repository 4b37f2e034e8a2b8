#!/usr/bin/env python3
"""Install portguard's shipped config files without overwriting an operator's edits.

`make install` runs this (with the system python3: no portguard import, standard library only)
once per install. Like dpkg's conffiles, per target file:

- missing: the shipped file is installed;
- identical to the shipped file: nothing to do (a stale ``<file>.dist`` is removed);
- unchanged since the last install (its hash is the one recorded then): replaced by the new
  shipped version;
- edited by the operator: kept as it is, and the shipped version is written next to it as
  ``<file>.dist`` (``--dist-suffix``) to compare and merge by hand. portguard reads only
  ``rules.d/*.toml``, so ``10-isp.toml.dist`` stays inert; logrotate would read a
  ``logrotate.d/portguard.dist`` (a duplicate entry, an error), so the Makefile gives that file
  ``.dpkg-dist``, which logrotate and run-parts ignore.

The hashes of the files it installed are kept in a JSON state file (``--state``). Without a
record (first install, or after `make uninstall` removed the state), a differing file counts as
edited: the safe side.

usage: install_config.py --state STATE [--dist-suffix .dist] SOURCE TARGET [SOURCE TARGET ...]
A SOURCE directory is installed recursively into the TARGET directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

DIST_SUFFIX = ".dist"
SKIPPED = ("__pycache__",)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pairs(source: Path, target: Path) -> Iterator[tuple[Path, Path]]:
    """(shipped file, target file) for a file, or for every file under a directory."""
    if source.is_file():
        yield source, target
        return
    for path in sorted(source.rglob("*")):
        if path.is_file() and not any(part in SKIPPED for part in path.parts):
            yield path, target / path.relative_to(source)


def place(shipped: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".new")
    shutil.copyfile(shipped, temporary)
    temporary.chmod(0o644)
    temporary.replace(target)


def install_one(shipped: Path, target: Path, state: dict[str, str], suffix: str) -> str:
    """Install one file; returns what was done (a word), and updates ``state``."""
    dist = target.with_name(target.name + suffix)
    new = digest(shipped)
    if not target.exists():
        place(shipped, target)
        outcome = "installed"
    elif digest(target) == new:
        outcome = "unchanged"
    elif state.get(str(target)) == digest(target):
        place(shipped, target)
        outcome = "updated"
    else:
        place(shipped, dist)
        return "kept"  # the record stays: it still names what was installed before the edit
    dist.unlink(missing_ok=True)
    state[str(target)] = new
    return outcome


def load_state(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return {str(key): str(value) for key, value in loaded.items()}


def save_state(path: Path, state: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def report(outcome: str, target: Path, suffix: str) -> str | None:
    if outcome == "kept":
        return f"kept your edited {target}; the shipped version is {target}{suffix}"
    if outcome == "unchanged":
        return None
    return f"{outcome} {target}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--dist-suffix", default=DIST_SUFFIX, dest="suffix")
    parser.add_argument("paths", nargs="+", type=Path, help="SOURCE TARGET pairs")
    args = parser.parse_args(argv)
    if len(args.paths) % 2:
        parser.error("SOURCE and TARGET come in pairs")
    state = load_state(args.state)
    for source, target in zip(args.paths[::2], args.paths[1::2], strict=True):
        if not source.exists():
            parser.error(f"{source}: no such file or directory")
        for shipped, destination in pairs(source, target):
            outcome = install_one(shipped, destination, state, args.suffix)
            line = report(outcome, destination, args.suffix)
            if line:
                print(line)
    save_state(args.state, state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
