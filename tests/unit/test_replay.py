"""Replay: captured frames decided by the daemon's own gate, with the capture's time as `now`.

Every decision is checked against a gate of its own fed the same IP packets directly (the way
the queue hands them to the daemon), in every link type scapy writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.packet import Packet

from portguard.core.events.record import Observer
from portguard.core.gate import Gate, Verdict, direction_of
from portguard.core.packet.decode import decode
from portguard.core.packet.model import ACK, FIN, RST, SYN, DecodeError
from portguard.core.policy import RuleSet
from portguard.core.policy.addresses import AddressSet, parse_network
from portguard.core.policy.model import Direction
from portguard.core.replay import (
    ALLOWED_MEMORY,
    WAN_FACTS,
    Counts,
    Decided,
    Frame,
    Replayer,
    compare,
    decisions,
    direction_between,
    is_initial_syn,
    maybe_queued,
)
from portguard.io.capture import Capture
from portguard.io.policyfiles import load_ruleset
from tests.captures import (
    INSIDE,
    LINK_TYPES,
    LINKTYPE_NUMBERS,
    MX4,
    MX6,
    SMARTHOST4,
    SUB4,
    SUB6,
    T0,
    arp,
    framed,
    syn,
    write,
)
from tests.strategies import PacketSpec, packet_specs

OBSERVER = Observer("gw-test", "0.0.0")
RULES = """
[sets.subscribers]
cidrs = ["100.64.0.0/10", "2001:db8:64::/48"]
[sets.smarthosts]
cidrs = ["198.51.100.26"]

[[rule]]
id = "smarthost"
src = "subscribers"
dst = "smarthosts"
dport = 25
direction = "outbound"
action = "allow"

[[rule]]
id = "block-25"
src = "subscribers"
dport = 25
direction = "outbound"
action = "reject"

[[rule]]
id = "inbound-25"
dst = "subscribers"
dport = 25
direction = "inbound"
action = "drop"

[[rule]]
id = "submission"
dport = [587]
action = "allow"
limit = { rate = "6/minute", burst = 5, per = "src", exceed = "reject" }

[[rule]]
id = "quiet"
dport = [465]
action = "allow"
log = false

[default]
action = "allow"
"""
PORTS = frozenset({25, 465, 587})


def ruleset(tmp_path: Path, text: str = RULES) -> RuleSet:
    (tmp_path / "rules.toml").write_text(text)
    return load_ruleset([tmp_path / "rules.toml"])


def inside() -> AddressSet:
    return AddressSet.from_networks("inside", [parse_network(text) for text in INSIDE])


def replayer(rules: RuleSet) -> Replayer:
    return Replayer(Gate(rules, OBSERVER), inside(), PORTS)


def mixed() -> list[tuple[float, Packet]]:
    """SYNs each rule decides, IPv4 and IPv6, and packets the hook never queues."""
    packets = [
        syn(SUB4, SMARTHOST4),  # smarthost: allow
        syn(SUB4, MX4, sport=40001),  # block-25: reject
        syn(SUB6, MX6),  # block-25, IPv6
        syn(MX4, SUB4, sport=50000),  # inbound-25: drop
        syn(MX6, SUB6, sport=50000),
        syn(SUB4, MX4, dport=587, sport=40002),  # submission
        syn(SUB4, MX4, dport=465, sport=40003),  # quiet: allow, not logged
        syn(SUB4, MX4, sport=40004, flags="SA"),  # a SYN-ACK: not queued
        syn(SUB4, MX4, sport=40005, flags="SF"),  # SYN+FIN: not queued
        syn(SUB4, MX4, dport=80, sport=40006),  # not a hooked port
        syn("100.64.1.1", "100.64.2.2"),  # internal: the default
        syn(MX4, "203.0.113.9"),  # external: the default
    ]
    return [(T0 + i * 0.5, packet) for i, packet in enumerate(packets)]


def frames_of(path: Path) -> list[Frame]:
    with Capture.open(path) as capture:
        return list(capture.frames(lambda text: pytest.fail(text)))


def by_the_gate(rules: RuleSet, packets: Iterable[tuple[float, Packet]]) -> list[tuple]:
    """What a gate of its own decides on the same IP packets, fed as the queue feeds it."""
    gate = Gate(rules, OBSERVER)
    found = []
    for moment, ip in packets:
        tcp = ip["TCP"]
        if tcp.dport not in PORTS or tcp.flags != "S":
            continue
        version = 6 if ip.version == 6 else 4
        src, dst = (int(parse_network(ip.src).first), int(parse_network(ip.dst).first))
        direction = direction_between(inside(), version, src, dst)
        outcome = gate.handle(bytes(ip), *WAN_FACTS[direction], moment)
        assert outcome.decision is not None
        found.append((moment, direction, outcome.verdict, outcome.decision.rule_id,
                      outcome.event))  # fmt: skip
    return found


def as_tuples(decided: Sequence[Decided]) -> list[tuple]:
    return [(d.now, d.direction, d.verdict, d.rule_id, d.record) for d in decided]


@pytest.mark.parametrize("link", [link for link in LINK_TYPES if link not in {"raw4", "raw6"}])
def test_decisions_are_the_gates_in_every_link_type(tmp_path: Path, link: str) -> None:
    rules = ruleset(tmp_path)
    packets = mixed()
    path = write(tmp_path / f"{link}.pcap", link, [*packets[:6], (T0 + 5.9, arp()), *packets[6:]])
    replay = replayer(rules)
    decided = list(decisions(frames_of(path), replay))
    expected = by_the_gate(rules, packets)
    assert as_tuples(decided) == expected
    assert [d.rule_id for d in decided] == ["smarthost", "block-25", "block-25", "inbound-25",
        "inbound-25", "submission", "quiet", "default", "default"]  # fmt: skip
    assert [d.direction for d in decided][-2:] == [Direction.INTERNAL, Direction.EXTERNAL]
    assert decided[6].record is None  # log = false: decided, nothing to log
    assert replay.counts == Counts(not_ip=1, other=3, decided=9)  # the ARP request: not IP
    assert replay.counts.frames == len(packets) + 1


@pytest.mark.parametrize(("link", "version"), [("raw4", 4), ("raw6", 6)])
def test_raw_ip_link_types(tmp_path: Path, link: str, version: int) -> None:
    rules = ruleset(tmp_path)
    packets = [(moment, ip) for moment, ip in mixed() if ip.version == version]
    path = write(tmp_path / f"{link}.pcap", link, packets)
    decided = list(decisions(frames_of(path), replayer(rules)))
    assert as_tuples(decided) == by_the_gate(rules, packets)
    assert decided


def test_directions_from_the_inside_address_space() -> None:
    space, v4 = inside(), 4
    sub, mx = parse_network(SUB4).first, parse_network(MX4).first
    assert direction_between(space, v4, sub, mx) is Direction.OUTBOUND
    assert direction_between(space, v4, mx, sub) is Direction.INBOUND
    assert direction_between(space, v4, sub, sub + 1) is Direction.INTERNAL
    assert direction_between(space, v4, mx, mx + 1) is Direction.EXTERNAL
    for direction, facts in WAN_FACTS.items():  # the gate reads the facts back the same way
        assert direction_of(*facts) is direction


def frame(
    number: int, moment: float, ip: Packet, link: str = "ethernet", out: bool = False
) -> Frame:
    return Frame(number, moment, LINKTYPE_NUMBERS[link], bytes(framed(link, ip, out)))


def test_an_allowed_connections_retransmitted_syn_stays_in_the_kernel(tmp_path: Path) -> None:
    replay = replayer(ruleset(tmp_path))
    first = replay.offer(frame(1, T0, syn(SUB4, SMARTHOST4, seq=7)))
    assert first is not None and first.verdict is Verdict.ALLOW
    assert replay.offer(frame(2, T0 + 1, syn(SUB4, SMARTHOST4, seq=7))) is None  # retransmitted
    assert replay.offer(frame(3, T0 + 3, syn(SUB4, SMARTHOST4, seq=7))) is None
    again = replay.offer(frame(4, T0 + 200, syn(SUB4, SMARTHOST4, seq=99)))  # a new connection
    assert again is not None and again.rule_id == "smarthost"
    assert replay.counts == Counts(kept=2, decided=2)


def test_a_dropped_syn_retransmitted_is_dropped_without_a_decision(tmp_path: Path) -> None:
    replay = replayer(ruleset(tmp_path))
    first = replay.offer(frame(1, T0, syn(MX4, SUB4, seq=5)))
    assert first is not None and first.verdict is Verdict.DROP
    assert replay.offer(frame(2, T0 + 1, syn(MX4, SUB4, seq=5))) is None
    assert replay.counts.retransmissions == 1


@pytest.mark.parametrize("link", ["sll", "sll2"])
def test_the_outgoing_copy_of_a_forwarded_packet_is_not_decided_twice(
    tmp_path: Path, link: str
) -> None:
    replay = replayer(ruleset(tmp_path))
    assert replay.offer(frame(1, T0, syn(SUB4, MX4), link)) is not None
    assert replay.offer(frame(2, T0, syn(SUB4, MX4), link, out=True)) is None
    pcapng_outbound = Frame(3, T0, 1, bytes(framed("ethernet", syn(SUB4, MX4))), outgoing=True)
    assert replay.offer(pcapng_outbound) is None
    assert replay.counts == Counts(outgoing=2, decided=1)


def test_broken_frames_are_counted_with_the_first_named(tmp_path: Path) -> None:
    replay = replayer(ruleset(tmp_path))
    assert replay.offer(Frame(1, T0, 1, b"\x00" * 10)) is None
    assert replay.offer(Frame(2, T0, 101, b"\x45" + b"\x00" * 10)) is None
    assert replay.counts.broken == 2
    assert replay.counts.first_broken == "packet 1: Ethernet header cut short (10 of 14 bytes)"


def syns_to_submission(spacing: float) -> list[Frame]:
    return [frame(i + 1, T0 + i * spacing, syn(SUB4, MX4, dport=587, sport=41000 + i))
            for i in range(10)]  # fmt: skip


@pytest.mark.parametrize(("spacing", "rejected"), [(0.1, 5), (11.0, 0)])
def test_rate_limits_follow_the_capture_time(tmp_path: Path, spacing: float, rejected: int) -> None:
    """6/minute, burst 5: ten SYNs within one second spend the burst and five are refused;
    ten SYNs over 100 seconds find a token every time (one comes back every 10 s)."""
    decided = list(decisions(syns_to_submission(spacing), replayer(ruleset(tmp_path))))
    verdicts = [d.verdict for d in decided]
    assert len(decided) == 10
    assert verdicts.count(Verdict.REJECT) == rejected
    assert verdicts[:5] == [Verdict.ALLOW] * 5


def test_time_never_runs_backwards_for_the_gate(tmp_path: Path) -> None:
    replay = replayer(ruleset(tmp_path))
    late = replay.offer(frame(1, T0 + 10, syn(SUB4, MX4)))
    early = replay.offer(frame(2, T0, syn(SUB4, MX4, sport=40001)))
    assert late is not None and early is not None and early.now == late.now


def test_allowed_memory_is_bounded(tmp_path: Path) -> None:
    replay = replayer(ruleset(tmp_path))
    for i in range(ALLOWED_MEMORY + 10):
        replay._remember((4, i, 1, 2, 25), i)
    assert len(replay._allowed) == ALLOWED_MEMORY


def test_compare_reports_only_what_differs(tmp_path: Path) -> None:
    old_rules = ruleset(tmp_path)
    (tmp_path / "new").mkdir()
    faster = RULES.replace('rate = "6/minute", burst = 5', 'rate = "60/minute", burst = 10')
    new_rules = ruleset(tmp_path / "new", faster)
    frames = syns_to_submission(0.1)
    found = list(compare(frames, replayer(old_rules), replayer(new_rules)))
    assert [(d.old.verdict, d.new.verdict) for d in found] == [(Verdict.REJECT, Verdict.ALLOW)] * 5
    assert [d.old.number for d in found] == [6, 7, 8, 9, 10]
    same = list(compare(frames, replayer(old_rules), replayer(old_rules)))
    assert same == []


def test_compare_tells_a_different_rule_with_the_same_verdict(tmp_path: Path) -> None:
    old_rules = ruleset(tmp_path)
    (tmp_path / "new").mkdir()
    renamed = ruleset(tmp_path / "new", RULES.replace('id = "block-25"', 'id = "no-direct-mail"'))
    found = list(compare([frame(1, T0, syn(SUB4, MX4))], replayer(old_rules), replayer(renamed)))
    assert [(d.old.rule_id, d.new.rule_id) for d in found] == [("block-25", "no-direct-mail")]


@given(
    spec=packet_specs(
        dports=st.sampled_from([25, 80, 465, 587, 2525]),
        flags=st.sampled_from([SYN, SYN | ACK, SYN | FIN, SYN | RST, ACK, SYN | 0x08, SYN | 0x40]),
    )
)
def test_the_quick_look_never_skips_a_packet_the_hook_queues(spec: PacketSpec) -> None:
    data = spec.to_bytes()
    packet = decode(data)
    queued = is_initial_syn(packet) and packet.dport in PORTS
    assert maybe_queued(data, PORTS) or not queued  # True when unsure (extension headers)


def test_the_quick_look_skips_plain_segments_without_a_decode() -> None:
    assert not maybe_queued(bytes(syn(SUB4, MX4, flags="A")), PORTS)
    assert not maybe_queued(bytes(syn(SUB6, MX6, flags="SA")), PORTS)
    assert not maybe_queued(bytes(syn(SUB4, MX4, dport=80)), PORTS)
    assert maybe_queued(bytes(syn(SUB4, MX4)), PORTS) and maybe_queued(bytes(syn(SUB6, MX6)), PORTS)


@given(data=st.binary(max_size=80))
def test_the_quick_look_takes_any_bytes(data: bytes) -> None:
    if not maybe_queued(data, PORTS):  # then it read a TCP header that is surely not queued
        try:
            packet = decode(data)
        except DecodeError:
            return  # the daemon drops it as malformed: not decided either
        assert not (is_initial_syn(packet) and packet.dport in PORTS)


def test_a_replay_feeds_the_detectors_and_the_quarantine(tmp_path: Path) -> None:
    """A bot's SYNs to four servers at the capture's times: the fan-out detector alerts on
    the third, the quarantine refuses its smarthost mail, and expires in capture time."""
    detect = '\n[detect.fanout]\ndport = [25]\ndistinct = 3\nwindow = "1m"\naction = "quarantine"\n'
    replaying = replayer(ruleset(tmp_path, RULES + detect + 'quarantine = "30s"\n'))
    packets = [syn(SUB4, f"198.51.100.{40 + n}", sport=41000 + n) for n in range(3)]
    found = [replaying.offer_packet(n, 100.0 + n, bytes(p)) for n, p in enumerate(packets)]
    assert [len(d.alerts) if d else None for d in found] == [0, 0, 2]
    alert, added = found[2].alerts if found[2] else ()
    assert alert["event"]["action"] == "fanout-detected"
    assert added["event"]["action"] == "quarantine-added"
    refused = replaying.offer_packet(4, 110.0, bytes(syn(SUB4, SMARTHOST4, sport=42000)))
    assert refused is not None and refused.rule_id == "quarantine:fanout"
    later = replaying.offer_packet(5, 140.0, bytes(syn(SUB4, SMARTHOST4, sport=42001)))
    assert later is not None and later.rule_id == "smarthost"
