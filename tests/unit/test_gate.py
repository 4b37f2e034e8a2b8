"""The pure gate: bytes in, verdict and event out; and the 100k-packet property test."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portguard.core.detect.quarantine import entry as quarantine_entry
from portguard.core.events.record import DecisionRecord, Event, Observer, connection_event
from portguard.core.gate import (
    RECENT_DROPS,
    RETRANSMISSION_WINDOW,
    Gate,
    Outcome,
    Verdict,
    direction_of,
    verdict_for,
)
from portguard.core.packet.model import ACK, SYN
from portguard.core.policy import RuleSet
from portguard.core.policy.model import Action, Connection, Decision, Direction
from portguard.io.nfqueue import COPY_RANGE
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import RULES_DIR
from tests import packetfuzz
from tests.strategies import PacketSpec, packet_specs, tcp_packets

OBSERVER = Observer("gw-test", "0.0.0")


def ev(outcome: Outcome) -> Event:
    """The event an outcome logs: a decision's record becomes its event (in the log process)."""
    logged = outcome.event
    assert logged is not None
    return connection_event(logged, OBSERVER) if isinstance(logged, DecisionRecord) else logged


SUBSCRIBER, MX, SMARTHOST = 0x64400A0A, 0xC6336419, 0xC633641A
BUSINESS = 0xCB00710A  # 203.0.113.10, on the shipped business list
SHIPPED: RuleSet = load_ruleset([RULES_DIR])


def syn(src: int, dst: int, dport: int, sport: int = 40312, flags: int = SYN) -> bytes:
    spec = PacketSpec(4, src, dst, sport, dport, flags, 1000, 0, 64240, 64)
    return spec.to_bytes()


def gate() -> Gate:
    return Gate(SHIPPED, OBSERVER)


def test_verdicts_and_directions() -> None:
    assert verdict_for(Action.ALLOW) is Verdict.ALLOW
    assert verdict_for(Action.LOG) is Verdict.ALLOW
    assert verdict_for(Action.REJECT) is Verdict.REJECT
    assert verdict_for(Action.DROP) is Verdict.DROP
    assert direction_of(False, True) is Direction.OUTBOUND
    assert direction_of(True, False) is Direction.INBOUND
    assert direction_of(False, False) is Direction.INTERNAL
    assert direction_of(True, True) is Direction.EXTERNAL


def test_subscriber_to_mx_is_rejected_and_every_repeat_is_decided_again() -> None:
    g = gate()
    first = g.handle(syn(SUBSCRIBER, MX, 25), False, True, 100.0)
    assert first.verdict is Verdict.REJECT
    assert first.event is not None and ev(first)["rule"]["id"] == "block-25"
    assert ev(first)["network"]["direction"] == "outbound"
    # the client got a RST: the same SYN again is a new attempt, with its own event
    again = g.handle(syn(SUBSCRIBER, MX, 25), False, True, 100.5)
    assert again.verdict is Verdict.REJECT and again.event is not None
    assert ev(again)["portguard"]["flow_id"] != ev(first)["portguard"]["flow_id"]
    assert g.hits[("block-25", Action.REJECT)] == 2


def test_smarthost_allowed_and_inbound_denied() -> None:
    g = gate()
    assert g.handle(syn(SUBSCRIBER, SMARTHOST, 25), False, True, 0.0).verdict is Verdict.ALLOW
    inbound = g.handle(syn(MX, SUBSCRIBER, 25), True, False, 0.0)
    assert inbound.verdict is Verdict.REJECT
    assert inbound.event is not None and ev(inbound)["rule"]["id"] == "inbound-25-subscribers"


def test_any_queued_packet_is_judged_with_its_sender_as_the_source() -> None:
    g = gate()
    # the hook queues only SYNs; should anything else arrive, its sender is the source
    reply = g.handle(syn(MX, SUBSCRIBER, 40312, sport=25, flags=SYN | ACK), True, False, 0.0)
    assert reply.event is not None
    assert ev(reply)["source"]["ip"] == "198.51.100.25"
    assert ev(reply)["network"]["direction"] == "inbound"
    # a packet the other way is judged on its own tuple and direction, not the reply's verdict
    back = g.handle(syn(SUBSCRIBER, MX, 25, sport=40312, flags=ACK), False, True, 0.1)
    assert back.event is not None and ev(back)["rule"]["id"] == "block-25"
    assert back.verdict is Verdict.REJECT


def test_a_reverse_direction_syn_is_decided_on_its_own_direction() -> None:
    g = gate()
    out = g.handle(syn(SUBSCRIBER, SMARTHOST, 25, sport=25), False, True, 0.0)
    assert out.verdict is Verdict.ALLOW and out.direction is Direction.OUTBOUND
    back = g.handle(syn(SMARTHOST, SUBSCRIBER, 25, sport=25), True, False, 1.0)
    assert back.verdict is Verdict.REJECT and back.direction is Direction.INBOUND
    assert back.event is not None and ev(back)["rule"]["id"] == "inbound-25-subscribers"
    assert ev(back)["source"] == {"ip": "198.51.100.26", "port": 25}


def test_a_replayed_allowed_syn_spends_a_token_and_gets_a_fresh_event(tmp_path: Path) -> None:
    rules = tmp_path / "limit.toml"
    rules.write_text(
        '[[rule]]\nid = "biz"\ndport = [25]\naction = "allow"\n'
        'limit = { rate = "1/minute", burst = 2, per = "src" }\n'
    )
    g = Gate(load_ruleset([rules]), OBSERVER)
    replays = [g.handle(syn(SUBSCRIBER, MX, 25), False, True, 0.5 * n) for n in range(6)]
    assert [o.verdict for o in replays] == [Verdict.ALLOW] * 2 + [Verdict.REJECT] * 4
    assert all(o.event is not None for o in replays)
    assert len({ev(o)["portguard"]["flow_id"] for o in replays}) == 6
    assert g.hits == {("biz", Action.ALLOW): 2, ("biz", Action.REJECT): 4}
    g.ruleset = SHIPPED  # a reload applies to the next replay
    after = g.handle(syn(SUBSCRIBER, MX, 25), False, True, 4.0)
    assert after.verdict is Verdict.REJECT
    assert after.event is not None and ev(after)["rule"]["id"] == "block-25"


def drop_gate(tmp_path: Path) -> Gate:
    rules = tmp_path / "drop.toml"
    rules.write_text('[[rule]]\nid = "quiet-drop"\ndport = [25]\naction = "drop"\n')
    return Gate(load_ruleset([rules]), OBSERVER)


def test_a_retransmitted_dropped_syn_is_dropped_again_without_an_event(tmp_path: Path) -> None:
    g = drop_gate(tmp_path)
    first = g.handle(syn(SUBSCRIBER, MX, 25), False, True, 10.0)
    assert first.verdict is Verdict.DROP and first.event is not None
    for at in (11.0, 13.0):  # Linux resends after 1 s and 3 s
        again = g.handle(syn(SUBSCRIBER, MX, 25), False, True, at)
        assert again.verdict is Verdict.DROP and again.event is None
        assert again.direction is Direction.OUTBOUND
    assert g.hits == {("quiet-drop", Action.DROP): 1}
    late = g.handle(syn(SUBSCRIBER, MX, 25), False, True, 10.0 + RETRANSMISSION_WINDOW + 0.1)
    assert late.verdict is Verdict.DROP and late.event is not None  # decided afresh


@pytest.mark.parametrize(
    ("change", "wan"),
    [
        pytest.param({"seq": 2000}, (False, True), id="another-isn"),
        pytest.param({"sport": 40313}, (False, True), id="another-port"),
        pytest.param({}, (True, False), id="another-direction"),
        pytest.param({"flags": SYN | ACK}, (False, True), id="not-an-initial-syn"),
    ],
)
def test_only_the_same_syn_is_a_retransmission(
    tmp_path: Path, change: dict[str, int], wan: tuple[bool, bool]
) -> None:
    g = drop_gate(tmp_path)
    assert g.handle(syn(SUBSCRIBER, MX, 25), False, True, 0.0).event is not None
    fields = {"sport": 40312, "flags": SYN, "seq": 1000} | change
    spec = PacketSpec(4, SUBSCRIBER, MX, fields["sport"], 25, fields["flags"], fields["seq"], 0,
                      64240, 64)  # fmt: skip
    assert g.handle(spec.to_bytes(), *wan, 1.0).event is not None


def test_a_reload_applies_to_the_next_syn_even_on_the_same_tuple(tmp_path: Path) -> None:
    g = gate()
    assert g.handle(syn(SUBSCRIBER, MX, 25, sport=1), False, True, 0.0).verdict is Verdict.REJECT
    open_rules = tmp_path / "open.toml"
    open_rules.write_text('[[rule]]\nid = "open"\naction = "allow"\n')
    g.ruleset = load_ruleset([open_rules])
    assert g.handle(syn(SUBSCRIBER, MX, 25, sport=1), False, True, 1.0).verdict is Verdict.ALLOW
    assert g.handle(syn(SUBSCRIBER, MX, 25, sport=2), False, True, 1.0).verdict is Verdict.ALLOW


def test_malformed_packets_are_dropped_and_rate_limited() -> None:
    g = gate()
    outcomes = [g.handle(b"\x45\x00", False, True, 0.0 + i / 10) for i in range(15)]
    assert {o.verdict for o in outcomes} == {Verdict.DROP}
    logged = [ev(o) for o in outcomes if o.event is not None]
    assert len(logged) == 2  # t=0.0 and t=1.0
    assert logged[1]["portguard"]["count"] == 10
    assert logged[1]["event"]["action"] == "drop"
    assert "source" not in logged[1]  # two bytes: no address to tell
    assert g.malformed == 15


def test_the_malformed_event_names_what_could_be_read() -> None:
    esp = PacketSpec(6, 0x2001_0DB8_0064_0010 << 64 | 0x10, 0x2001_0DB8_0025 << 80 | 0x25,
                     40312, 25, SYN, 1, 0, 64240, 64).to_bytes()  # fmt: skip
    esp = esp[:6] + bytes([50]) + esp[7:]  # next header ESP: the TCP header is unreadable
    event = ev(gate().handle(esp, False, True, 0.0))
    assert event["rule"]["id"] == "malformed-packet"
    assert event["source"] == {"ip": "2001:db8:64:10::10"}
    assert event["destination"] == {"ip": "2001:db8:25::25"}
    cut = syn(SUBSCRIBER, MX, 25)[:30]  # the TCP header cut after its ports
    event = ev(gate().handle(cut, False, True, 0.0))
    assert event["network"]["type"] == "ipv4"
    assert event["source"] == {"ip": "100.64.10.10", "port": 40312}
    assert event["destination"] == {"ip": "198.51.100.25", "port": 25}


def mutants(rng: random.Random, base: bytes, count: int) -> list[bytes]:
    """Bit flips, truncations, insertions and random garbage derived from `base`."""
    out = []
    for _ in range(count):
        data = bytearray(base)
        kind = rng.randrange(4)
        if kind == 0 and data:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[rng.randrange(len(data) + 1) :]
        elif kind == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 80)))
        out.append(bytes(data))
    return out


PACKETS_PER_EXAMPLE = 100
EXAMPLES = 1000  # 100,000 packets in all


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    base=st.one_of(
        tcp_packets(),
        packet_specs(dports=st.sampled_from([25, 465, 587])).map(lambda spec: spec.to_bytes()),
    ),
    seed=st.integers(0, 2**32 - 1),
    wan=st.tuples(st.booleans(), st.booleans()),
)
def test_100k_random_and_mutated_packets_all_get_a_verdict(
    base: bytes, seed: int, wan: tuple[bool, bool]
) -> None:
    g = PROPERTY_GATE
    rng = random.Random(seed)
    packets = [base, *mutants(rng, base, PACKETS_PER_EXAMPLE - 1)]
    for index, data in enumerate(packets):
        outcome = g.handle(data, wan[0], wan[1], float(seed % 1000) + index / 1000)
        assert isinstance(outcome.verdict, Verdict) and outcome.verdict is not Verdict.ACCEPT
        if outcome.event is not None:
            assert ev(outcome)["event"]["action"] in {"allow", "drop", "reject", "log"}
    assert len(g.recent_drops) <= RECENT_DROPS


PROPERTY_GATE = Gate(SHIPPED, OBSERVER)


FUZZ_PACKETS = 1_000_000
FUZZ_SEED = 9_2026
DECIDED = frozenset({Verdict.ALLOW, Verdict.REJECT, Verdict.DROP})  # never an unmarked ACCEPT


def test_a_million_fuzzed_packets_get_one_verdict_each_and_linux_syns_the_policys() -> None:
    """Generated and mutated packets (tests/packetfuzz.py) through the gate, cut to the queue's
    copy range: no exception, one Outcome each, never Verdict.ACCEPT; and every packet Linux
    would accept as a SYN to a hooked port is decided by the policy, not as malformed."""
    assert packetfuzz.COPY_RANGE == COPY_RANGE
    g = Gate(SHIPPED, OBSERVER)
    wans = list(WAN_FLAGS.items())
    expected: dict[tuple[object, ...], Decision] = {}
    outcomes = by_policy = 0
    for n, data in enumerate(packetfuzz.packets(FUZZ_SEED, FUZZ_PACKETS)):
        direction, (arrives, leaves) = wans[n & 3]
        malformed = g.malformed
        try:
            outcome = g.handle(data[:COPY_RANGE], arrives, leaves, n / 1000)
        except Exception as error:
            raise AssertionError(f"gate raised on {data.hex()}") from error
        assert type(outcome) is Outcome and outcome.verdict in DECIDED, data.hex()
        outcomes += 1
        syn = packetfuzz.linux_syn(data)
        if syn is None:
            continue
        by_policy += 1
        version, src, dst, _sport, dport = syn
        key = (version, src, dst, dport, direction)
        if key not in expected:
            expected[key] = SHIPPED.decide(Connection(version, src, dst, dport, direction))
        want = expected[key]
        assert g.malformed == malformed, f"Linux accepts this SYN: {data.hex()}"
        assert outcome.verdict is verdict_for(want.action), data.hex()
        assert outcome.event is not None and ev(outcome)["rule"]["id"] == want.rule_id
    assert outcomes == FUZZ_PACKETS
    assert by_policy > FUZZ_PACKETS // 10 and g.malformed > FUZZ_PACKETS // 10  # both explored


POOLS = {
    4: ["100.64.10.10", "100.127.255.254", "203.0.113.10", "198.51.100.26", "198.51.100.25",
        "192.0.2.2", "8.8.8.8"],
    6: ["2001:db8:64:10::10", "2001:db8:64:ffff::1", "2001:db8:b12::10", "2001:db8:25::26",
        "2001:db8:25::25", "2001:db8:ffff::2", "2001:db8:9::1"],
}  # fmt: skip
WAN_FLAGS = {
    Direction.OUTBOUND: (False, True),
    Direction.INBOUND: (True, False),
    Direction.INTERNAL: (False, False),
    Direction.EXTERNAL: (True, True),
}


def test_explain_and_the_gate_agree_on_1000_random_connections() -> None:
    import ipaddress

    rng = random.Random(1234)
    g = gate()
    for n in range(1000):
        version = rng.choice((4, 6))
        src, dst = (ipaddress.ip_address(rng.choice(POOLS[version])) for _ in range(2))
        dport = rng.choice((25, 465, 587, 2525))
        direction = rng.choice(list(WAN_FLAGS))
        spec = PacketSpec(version, int(src), int(dst), 1024 + n, dport, SYN, 1, 0, 64240, 64)
        outcome = g.handle(spec.to_bytes(), *WAN_FLAGS[direction], float(n))
        explained = SHIPPED.explain(Connection(version, int(src), int(dst), dport, direction))
        assert outcome.event is not None
        assert ev(outcome)["rule"]["id"] == explained.decision.rule_id, (src, dst, dport)
        assert ev(outcome)["event"]["action"] == explained.decision.action.value


def test_the_outcome_carries_the_direction_for_the_connmark() -> None:
    g = gate()
    first = g.handle(syn(SUBSCRIBER, SMARTHOST, 25, sport=7), False, True, 0.0)
    inbound = g.handle(syn(MX, SUBSCRIBER, 587, sport=7), True, False, 1.0)
    assert first.direction is Direction.OUTBOUND and inbound.direction is Direction.INBOUND


def test_rate_limit_and_log_false(tmp_path: Path) -> None:
    rules = tmp_path / "limits.toml"
    rules.write_text(
        '[[rule]]\nid = "biz"\nsrc = "203.0.113.0/24"\ndport = [25]\naction = "allow"\n'
        'limit = { rate = "5/minute", burst = 5, per = "src", exceed = "reject" }\n'
        '[[rule]]\nid = "quiet"\ndport = [587]\naction = "allow"\nlog = false\n'
    )
    g = Gate(load_ruleset([rules]), OBSERVER)
    customer, other = 0xCB00710A, 0xCB00710B  # 203.0.113.10 and .11
    verdicts = [g.handle(syn(customer, MX, 25, sport=p), False, True, 0.1 * p) for p in range(6)]
    assert [o.verdict for o in verdicts] == [Verdict.ALLOW] * 5 + [Verdict.REJECT]
    sixth = ev(verdicts[5])
    assert sixth["rule"]["id"] == "biz"
    assert sixth["portguard"]["limit"]["exceeded"] is True
    assert sixth["portguard"]["limit"]["rate"] == "5/minute"
    assert g.handle(syn(other, MX, 25), False, True, 1.0).verdict is Verdict.ALLOW
    later = g.handle(syn(customer, MX, 25, sport=99), False, True, 13.0)  # a token refilled
    assert later.verdict is Verdict.ALLOW
    quiet = g.handle(syn(customer, MX, 587, sport=100), False, True, 14.0)
    assert quiet.verdict is Verdict.ALLOW and quiet.event is None


def test_dropped_syns_are_remembered_for_the_window_and_no_more(tmp_path: Path) -> None:
    rules = tmp_path / "drop.toml"
    rules.write_text('[[rule]]\nid = "d"\naction = "drop"\ndport = [25]\n')
    g = Gate(load_ruleset([rules]), OBSERVER)
    for sport in range(1000, 1010):
        assert g.handle(syn(SUBSCRIBER, MX, 25, sport), False, True, 10.0).verdict is Verdict.DROP
    assert len(g.recent_drops) == 10
    assert g.forget_drops(10.0 + RETRANSMISSION_WINDOW) == 0
    assert g.forget_drops(10.1 + RETRANSMISSION_WINDOW) == 10 and not g.recent_drops
    # forgotten: the same SYN again is decided (and logged) afresh
    again = g.handle(syn(SUBSCRIBER, MX, 25, 1000), False, True, 14.0)
    assert again.event is not None and g.decided == 11


def test_recent_drops_never_outgrow_their_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("portguard.core.gate.RECENT_DROPS", 8)
    rules = tmp_path / "drop.toml"
    rules.write_text('[[rule]]\nid = "d"\naction = "drop"\ndport = [25]\n')
    g = Gate(load_ruleset([rules]), OBSERVER)
    for sport in range(1000, 1100):
        g.handle(syn(SUBSCRIBER, MX, 25, sport), False, True, 10.0)
    assert list(g.recent_drops) == [(4, SUBSCRIBER, MX, sport, 25) for sport in range(1092, 1100)]


def test_a_deny_is_cacheable_only_with_a_cache_period() -> None:
    g = gate()
    assert g.handle(syn(SUBSCRIBER, MX, 25), False, True, 1.0).cache is False  # cache off
    g.cache_period = 10.0
    denied = g.handle(syn(SUBSCRIBER, MX, 25, sport=2), False, True, 2.0)
    assert denied.verdict is Verdict.REJECT and denied.cache is True
    allowed = g.handle(syn(SUBSCRIBER, SMARTHOST, 25), False, True, 3.0)
    assert allowed.verdict is Verdict.ALLOW and allowed.cache is False


def test_a_rate_limit_deny_is_cacheable_only_when_a_token_refills_slower(tmp_path: Path) -> None:
    rules = tmp_path / "limits.toml"
    rules.write_text(
        '[[rule]]\nid = "slow"\ndport = [25]\naction = "allow"\n'
        'limit = { rate = "6/minute", burst = 1, per = "src", exceed = "drop" }\n'
        '[[rule]]\nid = "fast"\ndport = [587]\naction = "allow"\n'
        'limit = { rate = "2/second", burst = 1, per = "src", exceed = "reject" }\n'
    )
    g = Gate(load_ruleset([rules]), OBSERVER)
    g.cache_period = 10.0  # one token: 10 s (slow), 0.5 s (fast)
    outcomes = [g.handle(syn(SUBSCRIBER, MX, port, sport=s), False, True, 0.01 * s)
                for s, port in enumerate([25, 25, 587, 587])]  # fmt: skip
    assert [(o.verdict, o.cache) for o in outcomes] == [
        (Verdict.ALLOW, False), (Verdict.DROP, True),
        (Verdict.ALLOW, False), (Verdict.REJECT, False),
    ]  # fmt: skip
    g.cache_period = 10.5  # longer than one token of "slow": not cached any more
    assert g.handle(syn(SUBSCRIBER, MX, 25, sport=9), False, True, 0.1).cache is False


# --- detection and quarantine ----------------------------------------------------------------

DETECT = """
[detect.fanout]
dport = [25]
distinct = 3
window = "10m"
action = "quarantine"
quarantine = "1h"
quarantine_ports = [25, 587]
"""


def detecting_gate(tmp_path: Path, action: str = "quarantine") -> Gate:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-isp.toml").write_text((RULES_DIR / "10-isp.toml").read_text())
    (rules / "lists").symlink_to(RULES_DIR / "lists")
    text = DETECT.replace('"quarantine"\nquarantine = "1h"\nquarantine_ports = [25, 587]',
                          f'"{action}"') if action == "alert" else DETECT  # fmt: skip
    (rules / "20-detect.toml").write_text(text)
    return Gate(load_ruleset([rules]), OBSERVER)


def test_a_fanning_out_source_is_alerted_quarantined_and_refused_before_the_policy(
    tmp_path: Path,
) -> None:
    g = detecting_gate(tmp_path)
    assert g.handle(syn(SUBSCRIBER, SMARTHOST, 25), False, True, 0.0).verdict is Verdict.ALLOW
    for n in range(3):
        assert g.handle(syn(SUBSCRIBER, MX + 10 + n, 25), False, True, n).verdict is Verdict.REJECT
    (detected,) = g.take_detected()
    assert detected.alert.distinct == 3 and detected.quarantined is not None
    refused = g.handle(syn(SUBSCRIBER, SMARTHOST, 25), False, True, 5.0)
    assert refused.verdict is Verdict.REJECT and refused.decision is not None
    assert refused.decision.rule_id == "quarantine:fanout"
    assert ev(refused)["rule"] == {"id": "quarantine:fanout", "ruleset": "quarantine"}
    assert "quarantined by fanout until" in ev(refused)["portguard"]["reason"]
    assert g.handle(syn(SUBSCRIBER, SMARTHOST, 465), False, True, 6.0).verdict is Verdict.ALLOW
    assert g.handle(syn(SUBSCRIBER, SMARTHOST, 25), False, True, 3603.0).verdict is Verdict.ALLOW
    assert g.take_detected() == []


def test_quarantine_refusals_count_as_denied_attempts(tmp_path: Path) -> None:
    g = detecting_gate(tmp_path, "alert")
    for n in range(3):
        g.handle(syn(SUBSCRIBER, MX + 10 + n, 25), False, True, float(n))
    (detected,) = g.take_detected()
    assert detected.quarantined is None, 'action "alert" only alerts'
    assert not g.quarantine
    for n in range(3):  # a business customer may send on 25 to anyone
        assert g.handle(syn(BUSINESS, MX + n, 25), False, True, 10.0).verdict is Verdict.ALLOW
    g.quarantine.add(quarantine_entry((4, BUSINESS), "manual", 10.0, 100.0, [25]))
    for n in range(3):
        assert g.handle(syn(BUSINESS, MX + n, 25), False, True, 20.0).verdict is Verdict.REJECT
    (detected,) = g.take_detected()
    assert detected.alert.key == (4, BUSINESS)


def test_an_allowed_syn_never_reaches_the_detectors(tmp_path: Path) -> None:
    g = detecting_gate(tmp_path)
    for n in range(10):
        g.handle(syn(SUBSCRIBER, SMARTHOST, 25, sport=1000 + n), False, True, float(n))
    assert g.detection.tracked == 0 and g.take_detected() == []
