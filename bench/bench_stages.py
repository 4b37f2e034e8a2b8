"""Where a decision's time goes: the packet loop profiled per stage, in the running daemon.

The namespace lab, the real daemon (shipped rules, workers = 1, a file output, flood control
as shipped, `per_source = false`), and `lab.synflood` sending SYNs at a steady rate from the
subscriber to the smarthost's port 25 (allowed by rule `smarthost`: every SYN a new
connection, decided, logged and forwarded; the smarthost's closed port answers with a
reset). py-spy samples the packet loop's process (1,000 samples a second; samples waiting in
`select` are left out) while the generator runs; every sample is put in the stage of the
innermost function it names (STAGES, innermost first), and the CPU time the process spent
per decision (from /proc) is split by those shares. Time in a C call or a system call counts
for the Python function that made it: `verdict` includes the kernel's work for the verdict
(the repeat through the hook's chain, forwarding the SYN, the reset coming back), `read` the
netlink reads and the parsing of each message (with the batch reader: `BatchReader.read`, one
`recvmmsg` a batch, and `BatchReader._send`, one `sendto` for the batch's verdicts).

Run from the repository root (needs root and py-spy: `make bench` installs it):
    sudo .venv/bin/python bench/bench_stages.py [--rate 6000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon
from lab.peers import python_env

# (stage, functions whose frames belong to it: `Class.method` or a plain function's name); a
# sample goes to the first stage, innermost frame first, that names one of its frames
STAGES: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "verdict",
        frozenset({"apply_verdict", "QueueReader._give_verdict", "BatchReader._send", "answer"}),
    ),
    (
        "handoff",
        frozenset(
            {"LogProcess.add", "LogProcess.add_many", "LogProcess.flush", "LogProcess.flush_if_due"}
        ),
    ),
    ("event record", frozenset({"decision_record"})),
    ("limiter", frozenset({"Limiter.take", "BucketTable.take", "limited_decision"})),
    ("policy", frozenset({"RuleSet.first_match", "RuleSet._candidates_for"})),
    ("decode", frozenset({"decode_syn", "_ip_header", "_ipv4_header", "_ipv6_header"})),
    ("gate (direction, resends, counts)", frozenset({"Gate.handle"})),
    (
        "callback (payload, interfaces, clock)",
        frozenset(
            {
                "QueueReader._on_packet",
                "BatchReader._answer",
                "BatchReader._decide_one",
                "Worker.decide",
            }
        ),
    ),
    (
        "read (netlink, message parsing)",
        frozenset({"QueueReader.read", "BatchSocket.recv", "BatchReader.read"}),
    ),
)
OTHER = "loop, housekeeping, other"
IDLE = frozenset({"select", "poll", "wait"})  # waiting for packets: not counted


def stage_of(stack: Sequence[str]) -> str:
    """The stage of one sample; `stack` holds function names, outermost first."""
    for function in reversed(stack):
        for stage, functions in STAGES:
            if function in functions:
                return stage
    return OTHER


def parse_raw(text: str) -> Counter[str]:
    """py-spy's raw (collapsed) output: `frame;frame;... count` a line, a frame
    `function (file:line)`: samples per stage."""
    shares: Counter[str] = Counter()
    for line in text.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        # a frame is `Class.function (file:line)` or `function (file:line)`
        stack = [frame.split(" (", 1)[0].strip() for frame in stack_text.split(";")]
        if stack and stack[-1].rsplit(".", 1)[-1] in IDLE:
            continue
        shares[stage_of(stack)] += int(count)
    return shares


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(rate: int, seconds: float, pyspy: str) -> tuple[Counter[str], float, int]:
    """(samples per stage, CPU seconds of the packet loop's process, decisions) of one run."""
    with Lab() as lab:
        daemon = LabDaemon(lab, flood_window=60)
        text = daemon.config.read_text()  # one source at full rate: no per-source limit
        daemon.config.write_text(text.replace("[queue]\n", "[queue]\nper_source = false\n", 1))
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        try:
            out = Path(tempfile.mkdtemp()) / "stages.txt"
            before, cpu0 = lab.queue_stats(), cpu_seconds(pid)
            generator = lab.popen("sub", lab.python(
                "lab.synflood", "--src", a.SUBSCRIBER.v4, "--dst", a.SMARTHOST.v4, "--dport",
                str(a.PORT_SMTP), "--rate", str(rate), "--seconds", str(seconds)),
                env=python_env(), stdout=subprocess.DEVNULL)  # fmt: skip
            time.sleep(min(1.0, seconds / 4))  # the rate is steady
            subprocess.run([pyspy, "record", "--pid", str(pid), "--rate", "1000", "--format",
                            "raw", "--output", str(out), "--duration",
                            str(max(1, int(seconds - 2)))],
                           check=True, capture_output=True)  # fmt: skip
            generator.wait(seconds + 60)
            time.sleep(1.0)
            after, cpu1 = lab.queue_stats(), cpu_seconds(pid)
            assert before is not None and after is not None
            decided = after["id_sequence"] - before["id_sequence"]
            return parse_raw(out.read_text()), cpu1 - cpu0, decided
        finally:
            daemon.stop()


def report(shares: Counter[str], cpu: float, decided: int) -> str:
    total = sum(shares.values()) or 1
    per = cpu / max(decided, 1) * 1e6
    lines = [f"{decided} decisions, packet loop CPU {per:.1f} µs a decision", "",
             "| stage | share | µs a decision |", "|---|---:|---:|"]  # fmt: skip
    for stage in [*(name for name, _ in STAGES), OTHER]:
        share = shares.get(stage, 0) / total
        lines.append(f"| {stage} | {share:.1%} | {share * per:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=6000, help="SYNs a second (default 6000)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy is missing: .venv/bin/pip install py-spy (make bench does)", file=sys.stderr)
        return 1
    print(report(*profile(args.rate, args.seconds, pyspy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
