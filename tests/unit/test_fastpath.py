"""The packet loop's fast path: on any sequence of batches, the verdicts, records, flow ids and
counts are the gate's alone (two gates, one with the fast path, fed the same packets)."""

from __future__ import annotations

import ctypes
import marshal
import random
from array import array
from pathlib import Path

import pytest

from portguard.core.detect.quarantine import entry as quarantine_entry
from portguard.core.detect.quarantine import source_key
from portguard.core.events.record import DecisionRecord, Observer
from portguard.core.gate import RETRANSMISSION_WINDOW, Gate, Outcome, Verdict
from portguard.core.packet.model import ACK, SYN
from portguard.core.policy.model import Action
from portguard.io import batchqueue
from portguard.io.batchqueue import BatchReader
from portguard.io.fastpath import MAX_TEXT, FastPath, make_fast_path
from portguard.io.interfaces import WanInterfaces
from portguard.io.native import library
from portguard.io.policyfiles import load_ruleset
from portguard.log import handoff
from tests.strategies import PacketSpec

pytestmark = pytest.mark.skipif(library() is None, reason="no C library")

OBSERVER = Observer("gw-test", "0.0.0")
META_WORDS, F_PAYLOAD = 7, 1
LAN, WAN, OTHER = 2, 3, 4  # ifindexes: "lan0", "wan0", "dmz0"
NAMES = {LAN: "lan0", WAN: "wan0", OTHER: "dmz0"}
SUBSCRIBERS = [0x64400A00 + i for i in range(1, 6)]  # 100.64.10.x
BUSINESS = [0xCB007100 + i for i in range(1, 4)]  # 203.0.113.x
MX = [0xC6336400 + i for i in range(25, 29)]  # 198.51.100.25-28
PORTS = [25, 465, 587, 2525]

POLICY = """
[sets.subscribers]
cidrs = ["100.64.0.0/10"]

[sets.business]
cidrs = ["203.0.113.0/24"]

[sets.relays]
cidrs = ["198.51.100.26"]

[[rule]]
id = "submission"
dport = [587, 465]
direction = "outbound"
action = "allow"

[[rule]]
id = "quiet-relay"
description = "quiet \\"relay\\""
src = "subscribers"
dst = "relays"
dport = 25
action = "allow"
log = false

[[rule]]
id = "business-25"
src = "business"
dport = 25
direction = "outbound"
action = "log"

[[rule]]
id = "limited"
src = "subscribers"
dport = 2525
action = "allow"
limit = { rate = "2/second", burst = 2, per = "src", exceed = "drop" }

[[rule]]
id = "block-25"
src = "subscribers"
dport = 25
direction = "outbound"
action = "drop"

[[rule]]
id = "inbound-25"
dport = 25
direction = "inbound"
action = "reject"

[detect.fanout]
dport = [25]
distinct = 3
window = "10m"
action = "quarantine"
quarantine = "30s"
quarantine_ports = [25, 587]

[default]
action = "allow"
"""


def write_policy(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "10-test.toml").write_text(text)
    return directory


class Clock:
    """The batch reader's `time` (the time every test packet is read and decided at)."""

    now = 0.0

    @classmethod
    def time(cls) -> float:
        return cls.now


class SentVerdicts:
    """The library's pg_send: the verdict words of each batch, by packet id."""

    def __init__(self) -> None:
        self.verdicts: dict[int, tuple[int, ...]] = {}

    def pg_send(self, fd: int, queue: int, where: int, count: int, seq: int) -> int:
        words = array("I", ctypes.string_at(where, 16 * count))
        for at in range(0, len(words), 4):
            assert words[at] not in self.verdicts, "a second verdict for one packet"
            self.verdicts[words[at]] = tuple(words[at : at + 4])
        return 0


class World:
    """A gate deciding batches through the real batch reader: with the fast path (`fast`), or
    every packet in Python."""

    def __init__(self, rules: Path, fast: bool) -> None:
        self.gate = Gate(load_ruleset([rules]), OBSERVER, "7-abc-")
        self.wan = WanInterfaces(["wan0"], name_of=self._name_of)
        self.fast = make_fast_path(self.gate, self.wan) if fast else None
        self.records: list[DecisionRecord] = []
        self.sent = SentVerdicts()
        lib = library()
        assert lib is not None
        self.reader = BatchReader(lib, 0, 64, self._decide, print, Verdict.DROP,
                                  on_events=self._events, fast=self.fast,
                                  on_records=self._records)  # fmt: skip
        self.reader._lib = self.sent  # type: ignore[assignment]
        self.reader.fileno = lambda: -1  # type: ignore[method-assign]

    @property
    def verdicts(self) -> dict[int, tuple[int, ...]]:
        return self.sent.verdicts

    @property
    def fast_answered(self) -> int:
        return self.fast.answered if self.fast is not None else 0

    @staticmethod
    def _name_of(ifindex: int) -> str:
        if ifindex not in NAMES:
            raise OSError("no such interface")
        return NAMES[ifindex]

    def _decide(self, data: bytes, indev: int, outdev: int) -> Outcome:
        """What the worker's `decide` does."""
        known = self.wan.known
        outcome = self.gate.handle(data, known[indev], known[outdev], Clock.now)
        if self.fast is not None:
            self.fast.learn(outcome)
        return outcome

    def _events(self, events: list[object]) -> None:
        self.records += [e for e in events if isinstance(e, DecisionRecord)]

    def _records(self, payload: bytes, count: int) -> None:
        found = handoff.records_of(payload)
        assert len(found) == count
        self.records += found

    def batch(self, packets: list[tuple[int, bytes, int, int, int]], now: float) -> None:
        """(id, bytes, indev, outdev, mark) each, read at `now` as pg_recv leaves them."""
        words: list[int] = []
        at = 0
        for packet_id, data, indev, outdev, mark in packets:
            words += [packet_id, mark, indev, outdev, at, len(data), F_PAYLOAD]
            self.reader._buf[at : at + len(data)] = data
            at += len(data) + (-len(data) % 8)
        self.reader._meta[: len(words)] = array("I", words)
        Clock.now = now
        self.reader._answer(words)

    def hits(self) -> dict[object, int]:
        if self.fast is not None:
            self.fast.fold_hits()
        return dict(self.gate.hits)


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchqueue, "time", Clock)


def syn(src: int, dst: int, dport: int, sport: int, seq: int, flags: int = SYN) -> bytes:
    return PacketSpec(4, src, dst, sport, dport, flags, seq, 0, 64240, 64).to_bytes()


def assert_same(python: World, fast: World) -> None:
    """The same verdicts, the same records in the same order (flow ids included), the same
    counts and drop memory."""
    assert fast.verdicts == python.verdicts
    assert fast.records == python.records
    assert fast.gate.decided == python.gate.decided
    assert fast.hits() == python.hits()
    assert fast.gate.retransmissions == python.gate.retransmissions
    assert fast.gate.quarantine.refused == python.gate.quarantine.refused
    assert fast.gate.detection.alerts == python.gate.detection.alerts
    assert list(fast.gate.recent_drops) == list(python.gate.recent_drops)


@pytest.mark.parametrize("seed", range(12))
def test_any_sequence_of_batches_gives_what_the_gate_alone_gives(tmp_path: Path, seed: int) -> None:
    """Random SYNs over a few keys (so the memo answers many), retransmissions of dropped ones,
    IPv6 and IP options (never answered in C), unknown interfaces, a non-SYN, the marks of
    other tools, rate limits, `log = false`, reloads, quarantines (added between batches, and
    by the fan-out detector within a batch), the clock going on past the retransmission
    window."""
    rng = random.Random(seed)
    rules = write_policy(tmp_path / "a", POLICY)
    changed = write_policy(tmp_path / "b", POLICY.replace('action = "log"', 'action = "reject"'))
    python, fast = World(rules, fast=False), World(rules, fast=True)
    sent: list[tuple[int, bytes, int, int, int]] = []
    now, packet_id = 1_800_000_000.0, 0
    for _round in range(60):
        batch = []
        for _ in range(rng.randint(1, 40)):
            packet_id += 1
            if sent and rng.random() < 0.15:  # a retransmission (or a replay) of an earlier SYN
                _old, data, indev, outdev, mark = rng.choice(sent)
            else:
                data, indev, outdev = random_syn(rng)
                mark = rng.choice([0, 0, 0x5, 0xE0000000])
            batch.append((packet_id, data, indev, outdev, mark))
        sent += batch
        for world in (python, fast):
            world.batch(batch, now)
        now += rng.choice([0.0, 0.01, 0.3, 1.0, RETRANSMISSION_WINDOW, 3.5])
        event = rng.random()
        if event < 0.05:  # a reload: a new policy object, another decision for business-25
            new = rules if rng.random() < 0.5 else changed
            for world in (python, fast):
                world.gate.ruleset = load_ruleset([new])
        elif event < 0.1:  # a quarantine: refuses the source before the policy
            source = rng.choice(SUBSCRIBERS + BUSINESS)
            for world in (python, fast):
                added = quarantine_entry(source_key(4, source), "fanout", now, now + 5, [25, 587])
                world.gate.quarantine.add(added)
        elif event < 0.15:
            for world in (python, fast):
                world.gate.forget_drops(now)
    assert_same(python, fast)
    assert fast.fast_answered > 0  # the fast path did answer some


def random_syn(rng: random.Random) -> tuple[bytes, int, int]:
    src = rng.choice(SUBSCRIBERS + BUSINESS + MX)
    dst = rng.choice(MX + SUBSCRIBERS)
    dport, sport, seq = rng.choice(PORTS), rng.randint(1024, 1100), rng.getrandbits(32)
    indev, outdev = rng.choice([(LAN, WAN), (WAN, LAN), (LAN, OTHER), (WAN, WAN), (LAN, 9),
                                (0, WAN), (LAN, WAN), (LAN, WAN)])  # fmt: skip
    kind = rng.random()
    if kind < 0.05:  # IPv6: always the gate's
        spec = PacketSpec(6, 0x20010DB8 << 96 | src, 0x20010DB8 << 96 | dst, sport, dport, SYN,
                          seq, 0, 64240, 64)  # fmt: skip
        return spec.to_bytes(), indev, outdev
    data = syn(src, dst, dport, sport, seq, SYN | ACK if kind < 0.08 else SYN)
    if kind < 0.11:  # IP options (a NOP word): the gate's
        data = (
            bytes([0x46])
            + data[1:2]
            + (len(data) + 4).to_bytes(2, "big")
            + data[4:20]
            + (b"\x01\x01\x01\x01" + data[20:])
        )
    elif kind < 0.13:  # cut short: the gate's (malformed)
        data = data[:30]
    return data, indev, outdev


def test_a_learnt_allow_is_answered_in_c_with_the_gate_s_record(tmp_path: Path) -> None:
    world = World(write_policy(tmp_path, POLICY), fast=True)
    assert world.fast is not None
    business, mx = BUSINESS[0], MX[0]
    world.batch([(1, syn(business, mx, 25, 40000, 1), LAN, WAN, 0)], 1_800_000_000.0)
    assert world.fast_answered == 0  # the gate decided it, and taught the memo
    world.batch([(2, syn(business, mx, 25, 40001, 2), LAN, WAN, 0x5),
                 (3, syn(business, mx, 25, 40002, 3), WAN, LAN, 0)], 1_800_000_001.5)  # fmt: skip
    assert world.fast_answered == 1  # the same key; the other direction is another
    first, second, third = world.records
    assert second == first._replace(now=1_800_000_001.5, sport=40001, flow_id="7-abc-2")
    assert world.verdicts[2][:3] == (2, 4, 1) and world.verdicts[2][3] & 0x5 == 0x5
    assert (third.direction, third.rule_id) == ("inbound", "inbound-25")
    assert world.hits()[("business-25", Action.LOG)] == 2


def test_a_reload_starts_a_new_generation(tmp_path: Path) -> None:
    rules = write_policy(tmp_path, POLICY)
    world = World(rules, fast=True)
    packet = syn(BUSINESS[0], MX[0], 25, 40000, 1)
    world.batch([(1, packet, LAN, WAN, 0)], 1_800_000_000.0)
    world.gate.ruleset = load_ruleset([write_policy(tmp_path / "b", POLICY.replace(
        'action = "log"', 'action = "reject"'))])  # fmt: skip
    world.batch([(2, syn(BUSINESS[0], MX[0], 25, 40001, 2), LAN, WAN, 0)], 1_800_000_001.0)
    assert world.fast_answered == 0
    assert world.records[-1].action == "reject"


def test_a_dropped_syn_resent_within_the_window_is_the_gate_s(tmp_path: Path) -> None:
    """An allow learnt for the key does not let a retransmission of a SYN the gate dropped
    (under the policy before a reload) through: the gate drops it again."""
    world = World(write_policy(tmp_path, POLICY.replace('action = "log"', 'action = "drop"')),
                  fast=True)  # fmt: skip
    start, dropped = 1_800_000_000.0, syn(BUSINESS[0], MX[0], 25, 40000, 1)
    world.batch([(1, dropped, LAN, WAN, 0)], start)
    world.gate.ruleset = load_ruleset([write_policy(tmp_path / "b", POLICY)])
    for step, at in enumerate((0.5, 1.2, 2.4)):  # the memo learns the allow; time goes on
        world.batch([(2 + step, syn(BUSINESS[0], MX[0], 25, 40001 + step, 2), LAN, WAN, 0)],
                    start + at)  # fmt: skip
    world.batch([(5, dropped, LAN, WAN, 0), (6, syn(BUSINESS[0], MX[0], 25, 40005, 3), LAN,
                                                WAN, 0)], start + 2.9)  # fmt: skip
    assert world.verdicts[5][1] == 0 and world.gate.retransmissions == 1  # dropped again
    assert world.fast_answered == 3  # the new connections after the first allow
    world.batch([(7, dropped, LAN, WAN, 0)], start + 3.5)  # past the window: decided afresh
    assert world.verdicts[7][1] == 4 and world.gate.retransmissions == 1


def test_without_the_library_or_with_a_long_prefix_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ruleset = load_ruleset([write_policy(tmp_path, POLICY)])
    assert make_fast_path(Gate(ruleset, OBSERVER, "x" * 65), WanInterfaces([])) is None
    assert make_fast_path(Gate(ruleset, OBSERVER, "é-"), WanInterfaces([])) is None
    assert make_fast_path(Gate(ruleset, OBSERVER, "x" * 64), WanInterfaces([])) is not None
    monkeypatch.setattr("portguard.io.fastpath.library", lambda: None)
    assert make_fast_path(Gate(ruleset, OBSERVER), WanInterfaces([])) is None


def test_the_outcome_of_a_deny_or_a_limit_is_never_learnt(tmp_path: Path) -> None:
    world = World(write_policy(tmp_path, POLICY), fast=True)
    for port in (25, 2525):  # block-25 drops; limited allows within its limit
        packets = [(10 * port + i, syn(SUBSCRIBERS[0], MX[0], port, 40000 + i, i), LAN, WAN, 0)
                   for i in range(3)]  # fmt: skip
        world.batch(packets[:1], 1_800_000_000.0)
        world.batch(packets[1:], 1_800_000_000.0)
    assert world.fast_answered == 0
    assert isinstance(world.fast, FastPath)
    assert Outcome(Verdict.ALLOW, None).verdict is Verdict.ALLOW


def test_a_decision_whose_texts_are_long_stays_the_gate_s_and_a_full_batch_fits(
    tmp_path: Path,
) -> None:
    """A decision's record must fit the records' buffer 256 times over: texts longer than
    MAX_TEXT are never learnt; a batch of 64 SYNs of a key with texts just under it is
    answered whole."""
    long = POLICY.replace(
        'id = "business-25"', f'id = "business-25"\ndescription = "{"x" * MAX_TEXT}"'
    )
    world = World(write_policy(tmp_path / "long", long), fast=True)
    packets = [(i, syn(BUSINESS[0], MX[0], 25, 40000 + i, i), LAN, WAN, 0) for i in range(1, 65)]
    world.batch(packets, 1_800_000_000.0)
    world.batch([(p + 100, *rest) for p, *rest in packets], 1_800_000_000.0)
    assert world.fast_answered == 0 and len(world.records) == 128
    size = MAX_TEXT - 300 - len(marshal.dumps(load_ruleset([tmp_path / "long"]).version))
    near = POLICY.replace('id = "business-25"', f'id = "business-25"\ndescription = "{"x" * size}"')
    world = World(write_policy(tmp_path / "near", near), fast=True)
    world.batch(packets[:1], 1_800_000_000.0)
    world.batch(packets[1:], 1_800_000_000.0)
    assert world.fast_answered == 63 and len(world.records) == 64
