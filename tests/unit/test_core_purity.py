"""The core (portguard/core) is pure by construction: no module of it imports, or uses at
import time, anything that touches files, sockets, processes, the netfilter queue or netlink.

Two checks: every import statement of every core module (read with ``ast``, nested imports
included) names only the standard library's pure modules, pydantic and other core modules;
and a fresh interpreter imports every core module with sockets, files and processes patched to
raise, and finds nothing but core modules newly loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "portguard" / "core"

# modules whose import alone says "this does I/O" (or runs a thread next to the packet loop)
FORBIDDEN = frozenset(
    {
        "_socket", "asyncio", "ctypes", "fcntl", "ftplib", "http", "io", "mmap", "multiprocessing",
        "netfilterqueue", "os", "posix", "pyroute2", "select", "selectors", "shutil", "signal",
        "smtplib", "socket", "socketserver", "ssl", "subprocess", "tempfile", "threading",
        "urllib",
    }
)  # fmt: skip
# the one exception: core/inet.py takes the C library's pure address conversions from socket
INET = (
    "portguard.core.inet",
    "socket",
    frozenset({"AF_INET", "AF_INET6", "inet_ntop", "inet_pton"}),
)
# calls that read or write files (pathlib.Path's methods among them); Path itself, a name, is fine
IO_CALLS = frozenset(
    {
        "open", "read_text", "read_bytes", "write_text", "write_bytes", "iterdir", "glob",
        "rglob", "exists", "is_file", "is_dir", "stat", "lstat", "resolve", "mkdir", "unlink",
        "touch", "getaddrinfo",
    }
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


CORE_MODULES = {module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """(module, imported names, line) of every import statement, relative ones resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            found.append((name, tuple(alias.name for alias in node.names), node.lineno))
    return found


def test_the_core_has_modules() -> None:
    assert {"portguard.core.gate", "portguard.core.policy.compiler"} <= set(CORE_MODULES)


@pytest.mark.parametrize("module", sorted(CORE_MODULES))
def test_a_core_module_imports_no_io_module(module: str) -> None:
    bad = []
    for name, names, line in imports(CORE_MODULES[module]):
        root = name.split(".")[0]
        if (module, name) == INET[:2] and set(names) <= INET[2]:
            continue
        if root in FORBIDDEN:
            bad.append(f"line {line}: {name}")
        elif root == "portguard" and name != "portguard" and not name.startswith("portguard.core"):
            bad.append(f"line {line}: {name} (outside the core)")
        elif name == "portguard" and set(names) - {"__version__", "core"}:
            bad.append(f"line {line}: from portguard import {', '.join(names)}")
    assert not bad, f"{module} imports I/O or non-core modules: {bad}"


@pytest.mark.parametrize("module", sorted(CORE_MODULES))
def test_a_core_module_calls_no_file_or_name_lookup(module: str) -> None:
    tree = ast.parse(CORE_MODULES[module].read_text())
    calls = [
        (node.lineno, func.attr if isinstance(func, ast.Attribute) else func.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for func in [node.func]
        if (isinstance(func, ast.Attribute) and func.attr in IO_CALLS)
        or (isinstance(func, ast.Name) and func.id in {"open", "getaddrinfo"})
    ]
    assert not calls, f"{module} calls {calls}"


# A fresh interpreter: the core's own dependencies are imported first, then sockets, files and
# processes are patched to raise, then every core module is imported. Any I/O at import time
# raises; any module other than a core module loaded by the core's imports is reported.
PROBE = r"""
import builtins, importlib, io, json, os, pathlib, socket, subprocess, sys
modules, deps = json.loads(sys.argv[1])
for dep, names in deps:  # as the core imports them (pydantic loads some names lazily)
    loaded = importlib.import_module(dep)
    for name in names:
        getattr(loaded, name, None) or importlib.import_module(f"{dep}.{name}")
import pydantic, pydantic.dataclasses  # its first model reads the plugin entry points: warm up
pydantic.create_model("Warm", x=(int, 0))(x=1)
pydantic.dataclasses.dataclass(type("Warm", (), {"__annotations__": {"x": int}}))(x=1)
touched = []
def refuse(name):
    def raiser(*args, **kwargs):
        touched.append(name)
        raise RuntimeError(f"the core used {name} at import time")
    return raiser
for owner, names in (
    (socket, ["socket", "getaddrinfo", "gethostbyname", "gethostbyaddr", "create_connection",
              "socketpair", "fromfd"]),
    (subprocess, ["Popen", "run", "call", "check_call", "check_output"]),
    (os, ["open", "stat", "lstat", "listdir", "scandir", "read", "write", "fork", "system",
          "popen", "remove", "unlink", "mkdir", "rename", "replace"]),
    (builtins, ["open"]),
    (io, ["open", "FileIO"]),
    (pathlib.Path, ["open", "stat", "iterdir", "read_text", "read_bytes", "write_text",
                    "write_bytes"]),
):
    for name in names:
        setattr(owner, name, refuse(f"{getattr(owner, '__name__', owner)}.{name}"))
before = set(sys.modules)
failed = {}
for module in modules:
    try:
        importlib.import_module(module)
    except Exception as error:
        failed[module] = f"{type(error).__name__}: {error}"
loaded = sorted(set(sys.modules) - before)
print(json.dumps({"failed": failed, "touched": touched, "loaded": loaded}))
"""


def test_every_core_module_imports_with_io_patched_to_fail() -> None:
    deps = sorted(
        {
            (name, names)
            for path in CORE_MODULES.values()
            for name, names, _ in imports(path)
            if not name.startswith("portguard") and name != "__future__"
        }
    )
    argv = [sys.executable, "-c", PROBE, json.dumps([sorted(CORE_MODULES), deps])]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failed"] == {}
    assert result["touched"] == []
    strangers = [
        m for m in result["loaded"] if m != "portguard" and not m.startswith("portguard.core")
    ]
    assert strangers == [], f"importing the core loaded non-core modules: {strangers}"
    assert set(CORE_MODULES) <= set(result["loaded"])
