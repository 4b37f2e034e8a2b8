"""The hook backends as text: generated rules, parsing of listings, decisions, without a kernel."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from portguard.core.marks import (
    DIRECTION_BITS,
    DIRECTION_MASK,
    MARK_ALLOW,
    MARK_CACHE,
    MARK_DROP,
    MARK_MASK,
    MARK_REJECT,
    VERDICT_MASK,
    direction_of_mark,
    mark_bits,
    with_mark_bits,
)
from portguard.core.policy.model import Direction
from portguard.io.hooks.backend import HookError, HookSpec, SourceLimit
from portguard.io.hooks.factory import cleanup_leftovers, select_backend
from portguard.io.hooks.iptables import (
    IptablesBackend,
    chain_rules,
    hashlimit_rate,
    jump_edits,
    jump_rule,
    parse_filter_table,
)
from portguard.io.hooks.nftables import (
    PROBE_RULESET,
    NftablesBackend,
    parse_table,
    queue_supported,
    ruleset,
    source_key,
)
from portguard.io.hooks.nftables import chain_rules as chain_rules_nft
from portguard.io.hooks.runner import COMMAND_NOT_FOUND, CommandResult, checked, run_command

DEFAULT = HookSpec(
    queue_num=0, workers=1, ports=(25, 465, 587), chains=("forward",), fail_open=False
)


def spec(**changes: object) -> HookSpec:
    fields = {"queue_num": 0, "workers": 1, "ports": (25, 465, 587), "chains": ("forward",)}
    return HookSpec(**{**fields, "fail_open": False, **changes})  # type: ignore[arg-type]


class FakeRunner:
    """Answers commands by argv prefix (longest first) and records every call."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[tuple[str, ...], str | None]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        key = tuple(argv)
        self.calls.append((key, stdin))
        for prefix in sorted(self.answers, key=len, reverse=True):
            if key[: len(prefix)] == prefix:
                return CommandResult(key, *self.answers[prefix])
        return CommandResult(key, 0, "", "")

    def stdin_of(self, program: str) -> list[str]:
        """What the calls of ``program`` got on stdin (the calls that got anything)."""
        return [stdin for argv, stdin in self.calls if argv[0] == program and stdin is not None]


# --- marks and spec --------------------------------------------------------------------------


def test_verdict_and_direction_bits_split_the_mask() -> None:
    assert VERDICT_MASK | DIRECTION_MASK | MARK_CACHE == MARK_MASK
    assert VERDICT_MASK & DIRECTION_MASK == 0 and (VERDICT_MASK | DIRECTION_MASK) & MARK_CACHE == 0
    verdicts = (MARK_ALLOW, MARK_REJECT, MARK_DROP)
    assert all(v & ~VERDICT_MASK == 0 and v for v in verdicts) and len(set(verdicts)) == 3
    assert set(DIRECTION_BITS) == set(Direction)
    assert all(bits & ~DIRECTION_MASK == 0 for bits in DIRECTION_BITS.values())
    assert len(set(DIRECTION_BITS.values())) == 4


@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize("verdict", [MARK_ALLOW, MARK_REJECT, MARK_DROP])
def test_a_mark_gives_back_its_verdict_and_direction(verdict: int, direction: Direction) -> None:
    mark = with_mark_bits(0xE0000042, mark_bits(verdict, direction))
    assert mark & ~MARK_MASK == 0xE0000042  # other bits kept
    assert mark & VERDICT_MASK == verdict
    assert direction_of_mark(mark) is direction


def test_mark_bits_examples() -> None:
    assert mark_bits(MARK_ALLOW, Direction.OUTBOUND) == 0x05000000
    assert mark_bits(MARK_REJECT, Direction.INBOUND) == 0x0A000000
    assert mark_bits(MARK_DROP, Direction.EXTERNAL) == 0x0F000000
    assert mark_bits(MARK_ALLOW) == mark_bits(MARK_ALLOW, Direction.INTERNAL) == MARK_ALLOW
    assert with_mark_bits(0xFFFFFFFF, 0x05000000) == 0xE5FFFFFF


@pytest.mark.parametrize("bits", [0, 0x04000000, 0x01000001, 0x10000000])
def test_mark_bits_refuses_what_is_not_a_verdict(bits: int) -> None:
    with pytest.raises(ValueError, match="not one of portguard's verdicts"):
        mark_bits(bits, Direction.OUTBOUND)


def test_a_mark_without_verdict_has_no_direction() -> None:
    assert direction_of_mark(0) is None
    assert direction_of_mark(0x0C000000) is None  # direction bits alone: not portguard's mark
    assert direction_of_mark(0xF0FFFFFF) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"workers": 0},
        {"queue_num": -1},
        {"queue_num": 65535, "workers": 2},
        {"ports": ()},
        {"ports": (0,)},
        {"ports": (65536,)},
        {"chains": ()},
        {"chains": ("input",)},
    ],
)
def test_spec_refuses_values_the_kernel_cannot_take(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        spec(**changes)


def test_spec_accepts_the_last_queue_and_sorts_ports() -> None:
    last = spec(queue_num=65534, workers=2, ports=(587, 25, 587))
    assert last.last_queue == 65535
    assert last.sorted_ports == (25, 587)


# --- nftables text ---------------------------------------------------------------------------

NFT_DEFAULT = """\
# applied atomically with: nft -f -
table inet portguard
delete table inet portguard
table inet portguard {
\tcounter invalid_dropped {
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\ttcp flags & rst == 0 ct mark & 0x03000000 == 0x02000000 counter reject with tcp reset
\t\tct mark & 0x03000000 == 0x03000000 counter drop
\t\tmeta mark & 0x03000000 == 0x02000000 counter reject with tcp reset
\t\tmeta mark & 0x03000000 == 0x03000000 counter drop
\t\tmeta mark & 0x1f000000 == 0x01000000 ct mark set ct mark & 0xe0ffffff | 0x01000000 accept
\t\tmeta mark & 0x1f000000 == 0x05000000 ct mark set ct mark & 0xe0ffffff | 0x05000000 accept
\t\tmeta mark & 0x1f000000 == 0x09000000 ct mark set ct mark & 0xe0ffffff | 0x09000000 accept
\t\tmeta mark & 0x1f000000 == 0x0d000000 ct mark set ct mark & 0xe0ffffff | 0x0d000000 accept
\t\tct mark & 0x03000000 == 0x01000000 accept
\t\ttcp flags & syn == syn tcp dport { 25, 465, 587 } ct state invalid \
counter name "invalid_dropped" drop
\t\ttcp flags & (fin | syn | rst | ack) == syn tcp dport { 25, 465, 587 } ct state new \
meta mark & 0x1f000000 == 0x00000000 counter queue num 0
\t}
}
"""


def test_nft_render_default_config() -> None:
    assert NftablesBackend().render(DEFAULT) == NFT_DEFAULT


@pytest.mark.parametrize(
    ("chains", "hooks"),
    [
        (("forward",), ["forward"]),
        (("output",), ["output"]),
        (("output", "forward"), ["forward", "output"]),
    ],
)
def test_nft_render_one_base_chain_per_hooked_chain(
    chains: tuple[str, ...], hooks: list[str]
) -> None:
    text = NftablesBackend().render(spec(chains=chains))
    declared = [line.split()[1] for line in text.splitlines() if line.startswith("\tchain ")]
    assert declared == hooks
    for hook in hooks:
        assert f"type filter hook {hook} priority filter; policy accept;" in text
    assert text.count("queue num 0\n") == len(hooks)


def test_nft_render_workers_spread_over_a_queue_range() -> None:
    text = NftablesBackend().render(spec(queue_num=4, workers=3))
    assert "counter queue num 4-6\n" in text


def test_nft_render_bypass_only_when_failing_open() -> None:
    assert "queue num 0 bypass\n" in NftablesBackend().render(spec(fail_open=True))
    assert "bypass" not in NftablesBackend().render(spec(fail_open=False))


NFT_LISTING = """\
table inet portguard {
\tcounter invalid_dropped {
\t\tpackets 7 bytes 420
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\ttcp flags ! rst ct mark & 0x03000000 == 0x02000000 counter packets 0 bytes 0 \
reject with tcp reset
\t\tct mark & 0x03000000 == 0x03000000 counter packets 0 bytes 0 drop
\t\tmeta l4proto tcp meta mark & 0x03000000 == 0x02000000 counter packets 0 bytes 0 \
reject with tcp reset
\t\tmeta mark & 0x03000000 == 0x03000000 counter packets 0 bytes 0 drop
\t\tmeta mark & 0x1f000000 == 0x01000000 ct mark set ct mark & 0xe1ffffff | 0x01000000 accept
\t\tmeta mark & 0x1f000000 == 0x05000000 ct mark set ct mark & 0xe5ffffff | 0x05000000 accept
\t\tmeta mark & 0x1f000000 == 0x09000000 ct mark set ct mark & 0xe9ffffff | 0x09000000 accept
\t\tmeta mark & 0x1f000000 == 0x0d000000 ct mark set ct mark & 0xedffffff | 0x0d000000 accept
\t\tct mark & 0x03000000 == 0x01000000 accept
\t\ttcp flags & syn == syn tcp dport { 25, 465, 587 } ct state invalid \
counter name "invalid_dropped" drop
\t\ttcp flags syn / fin,syn,rst,ack tcp dport { 25, 465, 587 } ct state new \
meta mark & 0x1f000000 == 0x00000000 counter packets 3 bytes 180 queue flags bypass to 0
\t}
}
"""


def test_nft_parse_listing() -> None:
    table = parse_table(NFT_LISTING)
    assert list(table.chains) == ["forward"]
    hook, rules = table.chains["forward"]
    assert hook == "forward" and len(rules) == 11
    assert len(table.queue_rules("forward")) == 1
    assert table.counters == {"invalid_dropped": 7}


def test_nft_status_complete_when_listing_matches_spec() -> None:
    runner = FakeRunner({("nft", "-t", "list"): (0, NFT_LISTING, "")})
    status = NftablesBackend(runner).status(spec(fail_open=True))
    assert (status.installed, status.complete, status.rule_sets) == (True, True, 1)
    assert "forward (hook forward, 11 rules)" in status.detail
    assert status.counters == {"per_source": 0, "invalid": 7, "deny_cache": 0}


def test_nft_status_names_what_differs_from_spec() -> None:
    runner = FakeRunner({("nft", "-t", "list"): (0, NFT_LISTING, "")})
    status = NftablesBackend(runner).status(spec(chains=("forward", "output"), fail_open=False))
    assert status.installed and not status.complete
    assert "no chain output" in status.detail
    assert "queue bypass differs from the fail mode" in status.detail


def test_nft_status_finds_a_table_of_an_older_layout() -> None:
    old = "\n".join(
        line for line in NFT_LISTING.splitlines() if "0x05000000" not in line and "drop" not in line
    )
    status = NftablesBackend(FakeRunner({("nft", "-t", "list"): (0, old, "")})).status(
        spec(fail_open=True)
    )
    assert status.installed and not status.complete
    assert "chain forward has 7 rules, 11 expected" in status.detail


def test_nft_status_absent_table() -> None:
    answer = (1, "", "Error: No such file or directory\nlist table inet portguard\n")
    status = NftablesBackend(FakeRunner({("nft", "-t", "list"): answer})).status()
    assert (status.installed, status.complete, status.rule_sets) == (False, False, 0)


def test_nft_status_reports_other_failures() -> None:
    answer = (1, "", "Operation not permitted (you must be root)")
    with pytest.raises(HookError, match="you must be root"):
        NftablesBackend(FakeRunner({("nft", "-t", "list"): answer})).status()


def test_nft_install_applies_rendered_text_in_one_batch() -> None:
    runner = FakeRunner()
    NftablesBackend(runner).install(DEFAULT)
    assert runner.calls == [(("nft", "-f", "-"), NFT_DEFAULT)]


def test_nft_remove_is_idempotent_text_and_tolerates_missing_nft() -> None:
    runner = FakeRunner({("nft",): (COMMAND_NOT_FOUND, "", "nft: not found")})
    NftablesBackend(runner).remove()
    assert runner.stdin_of("nft") == ["table inet portguard\ndelete table inet portguard\n"]


# --- iptables text ---------------------------------------------------------------------------

IPT_DEFAULT_CHAIN = (
    "-A PORTGUARD -p tcp -m tcp ! --tcp-flags RST RST -m connmark --mark 0x2000000/0x3000000"
    " -j REJECT --reject-with tcp-reset",
    "-A PORTGUARD -m connmark --mark 0x3000000/0x3000000 -j DROP",
    "-A PORTGUARD -p tcp -m mark --mark 0x2000000/0x3000000 -j REJECT --reject-with tcp-reset",
    "-A PORTGUARD -m mark --mark 0x3000000/0x3000000 -j DROP",
    "-A PORTGUARD -m mark --mark 0x1000000/0x3000000"
    " -j CONNMARK --save-mark --nfmask 0x1f000000 --ctmask 0x1f000000",
    "-A PORTGUARD -m mark --mark 0x1000000/0x3000000 -j RETURN",
    "-A PORTGUARD -m connmark --mark 0x1000000/0x3000000 -j RETURN",
    "-A PORTGUARD -p tcp -m multiport --dports 25,465,587 -m tcp --tcp-flags SYN SYN"
    " -m conntrack --ctstate INVALID -j DROP",
    "-A PORTGUARD -p tcp -m multiport --dports 25,465,587 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN"
    " -m conntrack --ctstate NEW -m mark --mark 0x0/0x1f000000 -j NFQUEUE --queue-num 0",
)


def test_iptables_render_default_config() -> None:
    text = IptablesBackend().render(DEFAULT)
    assert text.splitlines() == [
        line
        for family in ("iptables", "ip6tables")
        for line in (
            f"# applied with: {family}-restore -w --noflush",
            "*filter",
            ":PORTGUARD - [0:0]",
            "-F PORTGUARD",
            *IPT_DEFAULT_CHAIN,
            "-I FORWARD 1 -p tcp -j PORTGUARD",
            "COMMIT",
        )
    ]


def test_iptables_queue_target_for_workers_and_fail_open() -> None:
    assert chain_rules(spec(workers=2, fail_open=True))[-1].endswith(
        "-j NFQUEUE --queue-balance 0:1 --queue-bypass"
    )
    assert chain_rules(spec(queue_num=7))[-1].endswith("-j NFQUEUE --queue-num 7")


def test_iptables_single_port_and_multiport_limit() -> None:
    one = chain_rules(spec(ports=(587,)))[-1]
    assert "-p tcp -m tcp --dport 587 --tcp-flags FIN,SYN,RST,ACK SYN" in one
    many = [rule for rule in chain_rules(spec(ports=tuple(range(1000, 1017)))) if "NFQUEUE" in rule]
    assert len(many) == 2  # 15 ports + 2 ports
    assert "--dports " + ",".join(map(str, range(1000, 1015))) + " " in many[0]
    assert "--dports 1015,1016 " in many[1]


def test_iptables_render_output_chain() -> None:
    text = IptablesBackend().render(spec(chains=("output", "forward")))
    assert text.count("-I ") == 4  # two in each family
    assert "-I FORWARD 1 -p tcp -j PORTGUARD\n-I OUTPUT 1 -p tcp -j PORTGUARD\n" in text


IPT_LISTING = "\n".join(
    [
        "-P INPUT ACCEPT",
        "-P FORWARD ACCEPT",
        "-P OUTPUT ACCEPT",
        "-N PORTGUARD",
        "-N operator",
        "-A FORWARD -j operator",
        "-A FORWARD -p tcp -j PORTGUARD",
        "-A FORWARD -p tcp -j PORTGUARD",
        "-A OUTPUT -p tcp -j PORTGUARD",
        "-A operator -i eth1 -g PORTGUARD",
        "-A operator -j PORTGUARDED",
        *IPT_DEFAULT_CHAIN,
        "",
    ]
)


def test_iptables_parse_finds_every_jump() -> None:
    table = parse_filter_table(IPT_LISTING)
    assert table.chain_exists and table.chain_rules == IPT_DEFAULT_CHAIN
    assert table.jump_count("forward") == 2 and table.jump_count("output") == 1
    assert table.jumps["operator"] == ("-A operator -i eth1 -g PORTGUARD",)


def test_iptables_jump_edits_move_our_jump_to_the_top() -> None:
    # in IPT_LISTING the operator's "-j operator" stands above our two jumps
    edits = jump_edits(DEFAULT, parse_filter_table(IPT_LISTING))
    assert edits == [
        "-D FORWARD -p tcp -j PORTGUARD",
        "-D FORWARD -p tcp -j PORTGUARD",
        "-I FORWARD 1 -p tcp -j PORTGUARD",  # after the deletes: they match the same text
        "-D OUTPUT -p tcp -j PORTGUARD",
    ]


def test_iptables_jump_edits_keep_one_first_jump_per_hooked_chain() -> None:
    listing = "-N PORTGUARD\n-A FORWARD -p tcp -j PORTGUARD\n-A FORWARD -p tcp -j PORTGUARD\n"
    assert jump_edits(DEFAULT, parse_filter_table(listing)) == ["-D FORWARD -p tcp -j PORTGUARD"]


def test_iptables_jump_edits_replace_a_foreign_jump() -> None:
    table = parse_filter_table("-N PORTGUARD\n-A FORWARD -i eth0 -j PORTGUARD\n")
    assert jump_edits(DEFAULT, table) == [
        "-D FORWARD -i eth0 -j PORTGUARD",
        "-I FORWARD 1 -p tcp -j PORTGUARD",
    ]


def test_iptables_jump_edits_nothing_when_in_place() -> None:
    table = parse_filter_table("-N PORTGUARD\n-A FORWARD -p tcp -j PORTGUARD\n")
    assert jump_edits(DEFAULT, table) == []


def listing_runner(v4: str, v6: str) -> FakeRunner:
    return FakeRunner({("iptables", "-w"): (0, v4, ""), ("ip6tables", "-w"): (0, v6, "")})


def test_iptables_status_counts_duplicate_jumps() -> None:
    status = IptablesBackend(listing_runner(IPT_LISTING, IPT_LISTING)).status(DEFAULT)
    assert status.installed and not status.complete and status.rule_sets == 2
    assert "iptables: 2 jumps from FORWARD, one expected" in status.detail
    assert "iptables: jump from OUTPUT, which the config does not hook" in status.detail


def test_iptables_status_complete() -> None:
    clean = "-N PORTGUARD\n-A FORWARD -p tcp -j PORTGUARD\n" + "\n".join(IPT_DEFAULT_CHAIN)
    status = IptablesBackend(listing_runner(clean, clean)).status(DEFAULT)
    assert (status.installed, status.complete, status.rule_sets) == (True, True, 1)
    assert not IptablesBackend(listing_runner(clean, clean)).status(spec(workers=2)).complete


def test_iptables_status_half_installed() -> None:
    clean = "-N PORTGUARD\n-A FORWARD -p tcp -j PORTGUARD\n" + "\n".join(IPT_DEFAULT_CHAIN)
    status = IptablesBackend(listing_runner(clean, "-P FORWARD ACCEPT\n")).status()
    assert status.installed and not status.complete
    assert "ip6tables: no chain PORTGUARD" in status.detail


def test_iptables_install_sends_one_restore_per_family() -> None:
    runner = listing_runner("-P FORWARD ACCEPT\n", IPT_LISTING)
    IptablesBackend(runner).install(DEFAULT)
    v4, v6 = runner.stdin_of("iptables-restore"), runner.stdin_of("ip6tables-restore")
    first = IptablesBackend().render(DEFAULT).split("# applied with: ")[1]
    assert v4 == [first.split("\n", 1)[1]]
    assert v6[0].count("-I FORWARD 1") == 1 and v6[0].count("-D ") == 3


def test_iptables_remove_deletes_every_jump_then_the_chain() -> None:
    runner = listing_runner(IPT_LISTING, "-P FORWARD ACCEPT\n")
    IptablesBackend(runner).remove()
    assert runner.stdin_of("ip6tables-restore") == []
    script = runner.stdin_of("iptables-restore")[0].splitlines()
    assert script[0] == "*filter" and script[-3:] == ["-F PORTGUARD", "-X PORTGUARD", "COMMIT"]
    assert "-D operator -i eth1 -g PORTGUARD" in script
    assert sum(line.startswith("-D ") for line in script) == 4


def test_iptables_missing_program_means_nothing_installed() -> None:
    runner = FakeRunner({("iptables",): (COMMAND_NOT_FOUND, "", ""), ("ip6tables",): (127, "", "")})
    assert not IptablesBackend(runner).status().installed
    IptablesBackend(runner).remove()
    with pytest.raises(HookError, match="iptables -w -t filter -v -S failed"):
        IptablesBackend(runner).install(DEFAULT)


# --- backend choice and leftovers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "chosen"),
    [
        ((0, "", ""), "nftables"),
        ((1, "", "Could not process rule"), "iptables"),
        ((127, "", ""), "iptables"),
    ],
)
def test_auto_uses_nftables_only_when_the_kernel_takes_a_queue(
    probe: tuple[int, str, str], chosen: str
) -> None:
    runner = FakeRunner({("nft", "-c"): probe})
    assert select_backend("auto", runner).name == chosen
    assert runner.calls == [(("nft", "-c", "-f", "-"), PROBE_RULESET)]
    assert "queue num 0" in PROBE_RULESET and "portguard_probe" in PROBE_RULESET


def test_named_backends_need_no_probe() -> None:
    runner = FakeRunner()
    assert select_backend("nftables", runner).name == "nftables"
    assert select_backend("iptables", runner).name == "iptables"
    assert runner.calls == []
    with pytest.raises(ValueError, match="auto"):
        select_backend("ipfw", runner)


def test_queue_supported_is_a_check_only() -> None:
    runner = FakeRunner()
    assert queue_supported(runner)
    assert all("-c" in argv for argv, _ in runner.calls)


def test_cleanup_leftovers_removes_both_backends() -> None:
    runner = listing_runner(IPT_LISTING, "-P FORWARD ACCEPT\n")
    runner.answers[("nft", "-t", "list")] = (0, NFT_LISTING, "")
    assert cleanup_leftovers(runner) == ("nftables", "iptables")
    assert len(runner.stdin_of("iptables-restore")) == 1
    assert "delete table inet portguard" in runner.stdin_of("nft")[0]


def test_cleanup_leftovers_with_nothing_left_changes_nothing() -> None:
    runner = listing_runner("-P FORWARD ACCEPT\n", "-P FORWARD ACCEPT\n")
    runner.answers[("nft", "-t", "list")] = (1, "", "Error: No such file or directory")
    assert cleanup_leftovers(runner) == ()
    assert [runner.stdin_of(p) for p in ("nft", "iptables-restore", "ip6tables-restore")] == [
        []
    ] * 3


def test_cleanup_leftovers_skips_a_backend_that_cannot_list() -> None:
    runner = listing_runner(IPT_LISTING, IPT_LISTING)
    runner.answers[("nft", "-t", "list")] = (1, "", "Error: Operation not supported")
    assert cleanup_leftovers(runner) == ("iptables",)
    runner.answers[("iptables-restore",)] = (4, "", "iptables-restore: line 2 failed")
    with pytest.raises(HookError, match="line 2 failed"):
        cleanup_leftovers(runner)


# --- runner ----------------------------------------------------------------------------------


def test_run_command_reports_a_missing_program() -> None:
    result = run_command(["portguard-no-such-program"])
    assert result.returncode == COMMAND_NOT_FOUND


def test_checked_names_command_and_stderr() -> None:
    with pytest.raises(HookError, match=r"sh -c .* failed \(exit 3\): broken"):
        checked(run_command, ["sh", "-c", "echo broken >&2; exit 3"])
    assert checked(run_command, ["cat"], "in\n") == "in\n"


# --- drops before the queue: INVALID with SYN, one source over its rate ------------------------

LIMITED = spec(per_source=SourceLimit(200, 1000, 64))


def test_iptables_per_source_limit_per_family() -> None:
    v4, v6 = chain_rules(LIMITED, "iptables"), chain_rules(LIMITED, "ip6tables")
    (limit4,) = [rule for rule in v4 if "hashlimit" in rule]
    (limit6,) = [rule for rule in v6 if "hashlimit" in rule]
    assert limit4.endswith(
        "-m conntrack --ctstate NEW -m mark --mark 0x0/0x1f000000 -m hashlimit --hashlimit-above "
        f"200/sec --hashlimit-burst 1000 --hashlimit-mode srcip --hashlimit-name "
        f"portguard-{LIMITED.per_source.tag} --hashlimit-htable-max 262144 "
        "--hashlimit-htable-expire 60000 -j DROP"
    )
    assert limit6 == limit4.replace(" -j DROP", " --hashlimit-srcmask 64 -j DROP")
    # before the queue rule, after the INVALID drop
    assert v4.index(limit4) == len(v4) - 2 and "--ctstate INVALID" in v4[-3]
    assert not any("hashlimit" in rule for rule in chain_rules(DEFAULT, "ip6tables"))


def test_a_source_is_remembered_until_its_bucket_refilled_and_named_by_its_settings() -> None:
    assert SourceLimit(200, 1000).forget_after == 60  # refills in 5 s: the floor
    assert SourceLimit(1, 1000).forget_after == 1000  # a forgotten source gets no fresh burst
    assert SourceLimit(3, 1000).forget_after == 334
    tags = {SourceLimit(200, 1000).tag, SourceLimit(201, 1000).tag, SourceLimit(200, 1000, 56).tag}
    assert len(tags) == 3 and all(len(f"portguard-{tag}") <= 15 for tag in tags)  # kernel: 15
    rules = chain_rules(spec(per_source=SourceLimit(1, 1000)), "iptables")
    assert any("--hashlimit-htable-expire 1000000 " in rule for rule in rules)
    assert "timeout 1000s" in ruleset(spec(per_source=SourceLimit(1, 1000)))


def test_iptables_rules_are_written_as_iptables_prints_them() -> None:
    assert hashlimit_rate(200) == 200 and hashlimit_rate(9999) == 10000  # a whole µs period
    full = chain_rules(spec(per_source=SourceLimit(9999, 5, 128)), "ip6tables")
    (limit,) = [rule for rule in full if "hashlimit" in rule]
    assert "--hashlimit-above 10000/sec" in limit and "srcmask" not in limit  # 128: default


def test_iptables_invalid_syn_is_dropped_on_every_port_group() -> None:
    rules = chain_rules(spec(ports=tuple(range(1000, 1017))))
    invalid = [rule for rule in rules if "--ctstate INVALID" in rule]
    assert len(invalid) == 2 and all(r.endswith("--tcp-flags SYN SYN -m conntrack --ctstate "
                                                 "INVALID -j DROP") for r in invalid)  # fmt: skip


def with_counters(rules: Sequence[str], packets: Sequence[int]) -> list[str]:
    """Rules as `iptables -v -S` prints them: `-c PACKETS BYTES` before the target."""
    return [
        rule.replace(" -j ", f" -c {count} {count * 60} -j ", 1)
        for rule, count in zip(rules, packets, strict=True)
    ]


def test_iptables_status_reads_drop_counters_and_still_compares_exactly() -> None:
    listings = {}
    for family, base in (("iptables", 10), ("ip6tables", 1)):
        rules = chain_rules(LIMITED, family)
        counts = [0] * len(rules)
        counts[-3], counts[-2], counts[-1] = base, base * 100, 7  # invalid, per source, queue
        listings[family] = "\n".join(["-P FORWARD ACCEPT -c 5 300", "-N PORTGUARD",
                                      "-A FORWARD -p tcp -c 9 540 -j PORTGUARD",
                                      *with_counters(rules, counts)])  # fmt: skip
    status = IptablesBackend(listing_runner(listings["iptables"], listings["ip6tables"])).status(
        LIMITED
    )
    assert status.complete, status.detail
    assert status.counters == {"per_source": 1100, "invalid": 11, "deny_cache": 0}
    table = parse_filter_table(listings["iptables"])
    assert table.chain_rules == chain_rules(LIMITED) and table.heads["FORWARD"] == jump_rule(
        "forward"
    )


def test_iptables_status_sees_a_limit_that_differs_from_the_config() -> None:
    clean = "-N PORTGUARD\n-A FORWARD -p tcp -j PORTGUARD\n" + "\n".join(chain_rules(LIMITED))
    other = spec(per_source=SourceLimit(100, 1000, 64))
    status = IptablesBackend(listing_runner(clean, clean)).status(other)
    assert not status.complete and "the rules of PORTGUARD differ" in status.detail


def test_nft_render_per_source_meters_and_named_counters() -> None:
    text = NftablesBackend().render(LIMITED)
    for declared in ("\tcounter invalid_dropped {\n\t}\n", "\tcounter per_source_dropped {\n\t}\n",
                     "\tset per_source4 {\n\t\ttype ipv4_addr\n\t\tsize 65536\n"
                     "\t\tflags dynamic,timeout\n\t\ttimeout 60s\n\t}\n",
                     "\tset per_source6 {\n\t\ttype ipv6_addr\n"):  # fmt: skip
        assert declared in text
    assert text.index("set per_source6") < text.index("\tchain forward")
    rules = chain_rules_nft(LIMITED)
    assert rules[-4].startswith("tcp flags & syn == syn tcp dport { 25, 465, 587 } ct state inv")
    (v4,) = [rule for rule in rules if "@per_source4" in rule]
    assert "meta nfproto ipv4 " in v4
    assert "{ ip saddr limit rate over 200/second burst 1000 packets }" in v4
    (v6,) = [rule for rule in rules if "@per_source6" in rule]
    assert "meta nfproto ipv6 " in v6
    assert (
        "{ ip6 saddr & ffff:ffff:ffff:ffff:: limit rate over 200/second burst 1000 packets }" in v6
    )
    assert v6.endswith('counter name "per_source_dropped" drop')
    assert "queue num 0" in rules[-1]


def test_nft_source_key_cuts_ipv6_to_its_prefix() -> None:
    assert source_key(4, 64) == "ip saddr"
    assert source_key(6, 56) == "ip6 saddr & ffff:ffff:ffff:ff00::"
    assert source_key(6, 128) == "ip6 saddr"


def test_nft_status_needs_the_named_counters_and_reads_them() -> None:
    runner = FakeRunner({("nft", "-t", "list"): (0, NFT_LISTING, "")})
    status = NftablesBackend(runner).status(spec(fail_open=True, per_source=LIMITED.per_source))
    assert not status.complete and "no counter per_source_dropped" in status.detail
    assert ("nft", "-t", "list", "table", "inet", "portguard") in [c for c, _ in runner.calls]
