"""The wheel holds what a gateway runs, and all of it imports with the runtime dependencies only.

The wheel is built from a copy of this tree (``pip wheel --no-deps``), checked for what it
holds (the ``portguard`` package, every module of it, no ``lab``), and installed without
extras into a fresh venv (its runtime dependencies come from the package index, netfilterqueue
built from source); that venv's interpreter, isolated from this tree (``-I``, another working
directory), then imports every module the wheel lists and runs ``portguard --version``.
Slow (a venv and the dependencies: about 10 s with a warm pip cache), hence an integration test.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from portguard import __version__

ROOT = Path(__file__).resolve().parents[2]
COPY_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "__pycache__", ".*_cache", ".hypothesis", "*.egg-info"
)
IMPORT_ALL = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as error:
        failed[name] = f"{type(error).__name__}: {error}"
print(json.dumps(failed))
"""


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=COPY_IGNORED, symlinks=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(tree), "-w", "dist"], work)
    (built,) = (work / "dist").glob("portguard-*.whl")
    return built


def module_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        files = [name for name in archive.namelist() if name.endswith(".py")]
    names = [name.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for name in files]
    return sorted(name for name in names if name != "portguard.__main__")  # runs the CLI


def test_the_wheel_holds_the_package_and_no_lab(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"portguard", f"portguard-{__version__}.dist-info"}
    tree = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "portguard").rglob("*.py"))
    assert sorted(name for name in names if name.endswith(".py")) == tree
    assert "portguard/shipped/portguard.toml" in names


def test_every_module_imports_in_a_venv_without_extras(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], tmp_path)
    installed = run([python, "-I", "-m", "pip", "list", "--format=json"], tmp_path).stdout
    names = {entry["name"].lower() for entry in json.loads(installed)}
    assert not names & {"aiosmtpd", "communityid", "pytest", "hypothesis"}  # no test extra
    assert "scapy" in names  # a runtime dependency: `portguard replay` reads captures with it
    modules = module_names(wheel)
    assert "portguard.io.nfqueue" in modules and "portguard.core.gate" in modules
    failed = run([python, "-I", "-c", IMPORT_ALL, json.dumps(modules)], tmp_path).stdout
    assert json.loads(failed) == {}
    where = run([python, "-I", "-c", "import portguard; print(portguard.__file__)"], tmp_path)
    assert where.stdout.startswith(str(venv))  # the installed copy, not this tree
    lab = subprocess.run([python, "-I", "-c", "import lab"], cwd=tmp_path, capture_output=True)
    assert lab.returncode != 0  # the lab is not installed
    version = run([str(venv / "bin" / "portguard"), "--version"], tmp_path).stdout
    assert version.split() == ["portguard", __version__]
    replayed = run([str(venv / "bin" / "portguard"), *replay_args(tmp_path)], tmp_path).stdout
    assert "1 packets, 1 SYNs decided" in replayed and "block-25" in replayed


# a SYN from a subscriber to port 25 of another network, as raw IPv4 (checksums not checked)
SYN = bytes.fromhex(
    "45000028000100004006000064400a0ac63364199d78001900000001000000005002faf000000000"
)


def replay_args(folder: Path) -> list[str]:
    """`portguard replay` of a one-packet capture with the shipped rules (scapy reads it)."""
    capture = folder / "one.pcap"
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 228)  # LINKTYPE_IPV4
    capture.write_bytes(header + struct.pack("<IIII", 1795798800, 0, len(SYN), len(SYN)) + SYN)
    config = folder / "replay.toml"
    rules = json.dumps(str(ROOT / "portguard" / "shipped" / "rules"))
    config.write_text(f'[network]\ninternal = ["100.64.0.0/10"]\n[rules]\npaths = [{rules}]\n')
    return ["replay", "--config", str(config), str(capture)]
