"""Build hook: compiles portguard/io/nfqbatch.c, flowlines.c and decisionlines.c into
portguard/io/_nfqbatch.so (the batched kernel queue reader, portguard/io/batchqueue.py; the
conntrack DESTROY parser and flow-end lines, portguard/io/ctparse.py; the decision lines,
portguard/io/decisionlines.py) for every wheel, editable installs included.

A machine without a C compiler still gets a working portguard: the daemon then reads its queue
one packet per system call (python-netfilterqueue's way) and says so in `portguard status`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = (
    Path("portguard/io/nfqbatch.c"),
    Path("portguard/io/flowlines.c"),
    Path("portguard/io/decisionlines.c"),
    Path("portguard/io/fastpath.c"),
)
LIBRARY = Path("portguard/io/_nfqbatch.so")


def compile_library(root: Path) -> bool:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("portguard: no C compiler: the queue is read one packet per call", file=sys.stderr)
        return False
    command = [compiler, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(root / LIBRARY),
               *(str(root / source) for source in SOURCES), "-lm"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"portguard: {' '.join(command)} failed:\n{done.stderr}", file=sys.stderr)
    return done.returncode == 0


class NfqBatchHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or not compile_library(Path(self.root)):
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install loads it from the checkout
            build_data["force_include"][str(LIBRARY)] = str(LIBRARY)
