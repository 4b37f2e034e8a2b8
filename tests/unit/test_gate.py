"""The pure gate: bytes in, verdict and event out; and the 100k-packet property test."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portguard.decisionlog.record import Observer
from portguard.flow.table import FlowTable
from portguard.gate import Gate, Verdict, direction_of, verdict_for
from portguard.packet.model import ACK, SYN
from portguard.policy import RuleSet, load_ruleset
from portguard.policy.model import Action, Connection, Direction
from portguard.shipped import RULES_DIR
from tests.strategies import PacketSpec, packet_specs, tcp_packets

OBSERVER = Observer("gw-test", "0.0.0")
SUBSCRIBER, MX, SMARTHOST = 0x64400A0A, 0xC6336419, 0xC633641A
SHIPPED: RuleSet = load_ruleset([RULES_DIR])


def syn(src: int, dst: int, dport: int, sport: int = 40312, flags: int = SYN) -> bytes:
    spec = PacketSpec(4, src, dst, sport, dport, flags, 1000, 0, 64240, 64)
    return spec.to_bytes()


def gate(fail_open: bool = False) -> Gate:
    return Gate(SHIPPED, OBSERVER, fail_open, FlowTable(capacity=1024))


def test_verdicts_and_directions() -> None:
    assert verdict_for(Action.ALLOW) is Verdict.ALLOW
    assert verdict_for(Action.LOG) is Verdict.ALLOW
    assert verdict_for(Action.REJECT) is Verdict.REJECT
    assert verdict_for(Action.DROP) is Verdict.DROP
    assert direction_of(False, True) is Direction.OUTBOUND
    assert direction_of(True, False) is Direction.INBOUND
    assert direction_of(False, False) is Direction.INTERNAL
    assert direction_of(True, True) is Direction.EXTERNAL


def test_subscriber_to_mx_is_rejected_with_one_event() -> None:
    g = gate()
    first = g.handle(syn(SUBSCRIBER, MX, 25), False, True, 100.0)
    assert first.verdict is Verdict.REJECT
    assert first.event is not None and first.event["rule"]["id"] == "block-25"
    assert first.event["network"]["direction"] == "outbound"
    again = g.handle(syn(SUBSCRIBER, MX, 25), False, True, 101.0)  # retransmitted SYN
    assert again.verdict is Verdict.REJECT and again.event is None


def test_smarthost_allowed_and_inbound_denied() -> None:
    g = gate()
    assert g.handle(syn(SUBSCRIBER, SMARTHOST, 25), False, True, 0.0).verdict is Verdict.ALLOW
    inbound = g.handle(syn(MX, SUBSCRIBER, 25), True, False, 0.0)
    assert inbound.verdict is Verdict.REJECT
    assert inbound.event is not None and inbound.event["rule"]["id"] == "inbound-25-subscribers"


def test_a_flow_first_seen_mid_stream_is_judged_from_its_first_packet() -> None:
    g = gate()
    # the hook queues only SYNs; should anything else arrive first, its sender is the source
    reply = g.handle(syn(MX, SUBSCRIBER, 40312, sport=25, flags=SYN | ACK), True, False, 0.0)
    assert reply.event is not None
    assert reply.event["source"]["ip"] == "198.51.100.25"
    assert reply.event["network"]["direction"] == "inbound"
    # its answer, from the other side, belongs to the same flow: no second decision
    back = g.handle(syn(SUBSCRIBER, MX, 25, sport=40312, flags=ACK), False, True, 0.1)
    assert back.event is None and back.verdict is reply.verdict


def test_reload_changes_new_decisions_only(tmp_path: Path) -> None:
    g = gate()
    assert g.handle(syn(SUBSCRIBER, MX, 25, sport=1), False, True, 0.0).verdict is Verdict.REJECT
    open_rules = tmp_path / "open.toml"
    open_rules.write_text('[[rule]]\nid = "open"\naction = "allow"\n')
    g.ruleset = load_ruleset([open_rules])
    assert g.handle(syn(SUBSCRIBER, MX, 25, sport=1), False, True, 1.0).verdict is Verdict.REJECT
    assert g.handle(syn(SUBSCRIBER, MX, 25, sport=2), False, True, 1.0).verdict is Verdict.ALLOW


def test_malformed_packets_follow_the_fail_mode_and_are_rate_limited() -> None:
    closed, opened = gate(), gate(fail_open=True)
    outcomes = [closed.handle(b"\x45\x00", False, True, 0.0 + i / 10) for i in range(15)]
    assert {o.verdict for o in outcomes} == {Verdict.DROP}
    logged = [o.event for o in outcomes if o.event is not None]
    assert len(logged) == 2  # t=0.0 and t=1.0
    assert logged[1]["portguard"]["count"] == 10
    assert closed.malformed == 15
    assert opened.handle(b"", False, True, 0.0).verdict is Verdict.ACCEPT


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
        assert isinstance(outcome.verdict, Verdict)
        if outcome.event is not None:
            assert outcome.event["event"]["action"] in {"allow", "drop", "reject", "log"}
    assert len(g.flows) <= g.flows.capacity


PROPERTY_GATE = Gate(SHIPPED, OBSERVER, False, FlowTable(capacity=512))


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
        assert outcome.event["rule"]["id"] == explained.decision.rule_id, (src, dst, dport)
        assert outcome.event["event"]["action"] == explained.decision.action.value


def test_the_outcome_carries_the_direction_for_the_connmark() -> None:
    g = gate()
    first = g.handle(syn(SUBSCRIBER, SMARTHOST, 25, sport=7), False, True, 0.0)
    again = g.handle(syn(SUBSCRIBER, SMARTHOST, 25, sport=7), False, True, 1.0)
    assert first.direction is again.direction is Direction.OUTBOUND


def test_rate_limit_and_log_false(tmp_path: Path) -> None:
    rules = tmp_path / "limits.toml"
    rules.write_text(
        '[[rule]]\nid = "biz"\nsrc = "203.0.113.0/24"\ndport = [25]\naction = "allow"\n'
        'limit = { rate = "5/minute", burst = 5, per = "src", exceed = "reject" }\n'
        '[[rule]]\nid = "quiet"\ndport = [587]\naction = "allow"\nlog = false\n'
    )
    g = Gate(load_ruleset([rules]), OBSERVER, False, FlowTable())
    customer, other = 0xCB00710A, 0xCB00710B  # 203.0.113.10 and .11
    verdicts = [g.handle(syn(customer, MX, 25, sport=p), False, True, 0.1 * p) for p in range(6)]
    assert [o.verdict for o in verdicts] == [Verdict.ALLOW] * 5 + [Verdict.REJECT]
    sixth = verdicts[5].event
    assert sixth is not None and sixth["rule"]["id"] == "biz"
    assert sixth["portguard"]["limit"]["exceeded"] is True
    assert sixth["portguard"]["limit"]["rate"] == "5/minute"
    assert g.handle(syn(other, MX, 25), False, True, 1.0).verdict is Verdict.ALLOW
    later = g.handle(syn(customer, MX, 25, sport=99), False, True, 13.0)  # a token refilled
    assert later.verdict is Verdict.ALLOW
    quiet = g.handle(syn(customer, MX, 587, sport=100), False, True, 14.0)
    assert quiet.verdict is Verdict.ALLOW and quiet.event is None
