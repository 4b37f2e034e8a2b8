"""`portguard replay`: a capture through the policy, offline (docs/replay.md).

Reads the capture once (io/capture.py), hands each frame to a `Replayer` per policy
(core/replay.py: the daemon's own gate and limiter, the capture's time as `now`) and prints
the decisions' events (`--format json`: the log process's own builder and flood control), the
totals by rule and verdict (`table`), or with `--compare` the connections two policies decide
differently. Exit 0 done (compare: no difference), 3 differences, 1 an error.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from portguard import __version__
from portguard.cli import replaytext
from portguard.config.model import Config, load_config
from portguard.core.errors import SourceError
from portguard.core.events.lines import LogItem
from portguard.core.events.record import DecisionRecord, Observer
from portguard.core.gate import Gate
from portguard.core.policy.addresses import AddressSet, parse_network
from portguard.core.replay import Frame, Replayer, compare, decisions
from portguard.io.capture import Capture, CaptureError
from portguard.io.policyfiles import load_ruleset
from portguard.log.eventflow import EventFlow
from portguard.log.formats import render

PROGRESS_INTERVAL = 5.0  # seconds between progress lines on stderr
PROGRESS_CHECK = 4096  # frames between looks at the clock
DIFFERENT = 3  # --compare: some connection is decided differently


@dataclass(frozen=True, slots=True)
class ReplayArgs:
    config: Path
    capture: Path
    inside: Sequence[str] = ()
    compare: Path | None = None
    output_format: str = "table"
    progress: bool = False


class ReplayFailed(Exception):
    """A message for stderr and exit 1."""


def replay(args: ReplayArgs, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The command; never a traceback: every failure is a message and exit 1."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        return _replay(args, out, err)
    except ReplayFailed as error:
        print(f"portguard replay: {error}", file=err)
    except CaptureError as error:
        print(f"{args.capture}: {error}", file=err)
    except SourceError as error:
        for message in error.messages:
            print(message, file=err)
    except BrokenPipeError:  # `| head`: the reader is gone, not an error of the replay
        return 0
    except KeyboardInterrupt:
        print("portguard replay: interrupted", file=err)
        return 130
    except Exception as error:  # the last resort: a message, never a traceback
        print(f"portguard replay: {args.capture}: unexpected error: {error!r}", file=err)
    return 1


def _replay(args: ReplayArgs, out: TextIO, err: TextIO) -> int:
    config = load_config(args.config)
    inside = inside_of(args.inside, config)
    replayer = make_replayer(config, inside)
    if args.compare is not None:
        other = load_config(args.compare)
        new = make_replayer(other, inside_of(args.inside, other, fallback=inside))
        return _compare(args, replayer, new, out, err)
    with Capture.open(args.capture) as capture:
        frames = _watched(capture, args, replayer, err)
        if args.output_format == "json":
            _print_events(frames, replayer, EventFlow(replayer.gate.observer,
                                                      config.log.flood_window), out)  # fmt: skip
        else:
            totals = Counter((d.rule_id, d.verdict.value) for d in decisions(frames, replayer))
            out.write(replaytext.totals_table(args.capture, totals, replayer.counts))
    _report_broken(args.capture, replayer, err)
    return 0


def inside_of(
    given: Sequence[str], config: Config, fallback: AddressSet | None = None
) -> AddressSet:
    """The address space behind the gateway: --inside, else [network] internal."""
    if given:
        try:
            networks = [parse_network(text) for text in given]
        except ValueError as error:
            raise ReplayFailed(f"--inside: {error}") from None
        return AddressSet.from_networks("inside", networks)
    if config.network.internal:
        return AddressSet.from_networks("internal", config.network.internal_networks)
    if fallback is not None:
        return fallback
    raise ReplayFailed(f"{config.path}: which addresses are behind the gateway? Set [network] "
                       "internal = [CIDRs] in the config or give --inside CIDR")  # fmt: skip


def make_replayer(config: Config, inside: AddressSet) -> Replayer:
    """A gate of its own (flows, limiter) with the config's rule files, as the daemon's."""
    ruleset = load_ruleset(config.rules.paths)
    gate = Gate(ruleset, Observer(socket.gethostname(), __version__))
    return Replayer(gate, inside, frozenset(config.hook.ports))


def _print_events(
    frames: Iterator[Frame], replayer: Replayer, flow: EventFlow, out: TextIO
) -> None:
    """The events the daemon's log process would have written, one JSON line each."""
    write = out.buffer.write if hasattr(out, "buffer") else _text_writer(out)
    for decided in decisions(frames, replayer):
        events: list[LogItem] = []
        if isinstance(decided.record, DecisionRecord):
            events += flow.decision(decided.record)
        else:  # `log = false`: no event, but flood windows close on time
            events += flow.flush(decided.now)
        for alert in decided.alerts:  # a detector's alert, as the worker logs it
            events += flow.admit(alert, decided.now)
        for event in events:
            write(render(event, "ecs") + b"\n")
    for event in flow.flush_all():
        write(render(event, "ecs") + b"\n")
    out.flush()


def _text_writer(out: TextIO) -> Callable[[bytes], object]:
    return lambda line: out.write(line.decode())


def _compare(args: ReplayArgs, old: Replayer, new: Replayer, out: TextIO, err: TextIO) -> int:
    with Capture.open(args.capture) as capture:
        frames = _watched(capture, args, old, err)
        differences = list(compare(frames, old, new))
    out.write(replaytext.differences(differences, old.counts.decided, args.output_format))
    _report_broken(args.capture, old, err)
    return DIFFERENT if differences else 0


@dataclass(slots=True)
class _Progress:
    err: TextIO
    name: Path
    enabled: bool
    next_at: float = field(default_factory=lambda: time.monotonic() + PROGRESS_INTERVAL)

    def show(self, capture: Capture, replayer: Replayer) -> None:
        if not self.enabled or time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + PROGRESS_INTERVAL
        print(f"{self.name}: {capture.done:.0%}, {capture.number:,} packets, "
              f"{replayer.counts.decided:,} SYNs decided", file=self.err, flush=True)  # fmt: skip


def _watched(
    capture: Capture, args: ReplayArgs, replayer: Replayer, err: TextIO
) -> Iterator[Frame]:
    """The capture's frames, with warnings and progress on stderr."""
    progress = _Progress(err, args.capture, args.progress or err.isatty())
    for frame in capture.frames(lambda text: print(f"{args.capture}: warning: {text}", file=err)):
        if frame.number % PROGRESS_CHECK == 0:
            progress.show(capture, replayer)
        yield frame


def _report_broken(path: Path, replayer: Replayer, err: TextIO) -> None:
    counts = replayer.counts
    if counts.broken:
        print(f"{path}: warning: {counts.broken:,} packets could not be decoded and were "
              f"skipped (the first: {counts.first_broken})", file=err)  # fmt: skip
