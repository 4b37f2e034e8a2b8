"""The iptables deny cache: its ipsets, its rules, the listing parser and the rotation's
commands (through a fake runner: no root, no kernel)."""

from __future__ import annotations

from portguard.io.hooks.ipsets import (
    IpsetCache,
    all_sets,
    create_script,
    parse_members,
    set_problems,
)
from portguard.io.hooks.iptables import (
    IptablesBackend,
    chain_rules,
    drop_counters,
    parse_filter_table,
)
from tests.unit.test_hookrules import FakeRunner, spec

CACHED = spec(deny_cache=True)
LISTING = """\
create portguard-r4-spare hash:ip,port,ip family inet hashsize 1024 maxelem 65536 counters
add portguard-r4-spare 100.64.10.10,tcp:25,198.51.100.25 packets 18000 bytes 1080000
add portguard-r4-spare 100.64.10.10,tcp:25,198.51.100.26 packets 1 bytes 60
create portguard-r6-spare hash:ip,port,ip family inet6 hashsize 1024 maxelem 65536 counters
add portguard-r6-spare 2001:db8:64:10::10,tcp:587,2001:db8:25::25 packets 3 bytes 240
"""


def test_every_set_has_a_spare_of_its_type_and_counts_per_element() -> None:
    assert all_sets() == (
        "portguard-r4", "portguard-r4-spare", "portguard-d4", "portguard-d4-spare",
        "portguard-r6", "portguard-r6-spare", "portguard-d6", "portguard-d6-spare",
    )  # fmt: skip
    lines = create_script().splitlines()
    assert lines[0] == "create portguard-r4 hash:ip,port,ip family inet counters maxelem 65536"
    assert lines[-1].startswith("create portguard-d6-spare hash:ip,port,ip family inet6 counters")


def test_the_listing_gives_each_key_its_hits_less_the_adding_packet() -> None:
    assert parse_members(LISTING) == {
        (4, 0x64400A0A, 0xC6336419, 25): 17999,
        (4, 0x64400A0A, 0xC633641A, 25): 0,  # added, never answered
        (6, 0x20010DB8006400100000000000000010, 0x20010DB8002500000000000000000025, 587): 2,
    }


def test_the_rules_add_a_cached_deny_once_and_answer_before_the_rate_limit_and_the_queue() -> None:
    rules = chain_rules(spec(deny_cache=True, ports=(25,)), "ip6tables")
    assert rules[0] == (
        "-A PORTGUARD -m mark --mark 0x12000000/0x13000000 -m set ! --match-set portguard-r6 "
        "src,dst,dst ! --update-counters -j SET --add-set portguard-r6 src,dst,dst --exist"
    )
    assert "--add-set portguard-d6 " in rules[1]
    lookups = [i for i, rule in enumerate(rules) if "--match-set" in rule and "-j SET" not in rule]
    invalid = next(i for i, rule in enumerate(rules) if "INVALID" in rule)
    queue = next(i for i, rule in enumerate(rules) if "NFQUEUE" in rule)
    assert invalid < min(lookups) and max(lookups) < queue and len(lookups) == 2
    assert rules[lookups[0]] == (
        "-A PORTGUARD -p tcp -m tcp --dport 25 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack "
        "--ctstate NEW -m mark --mark 0x0/0x1f000000 -m set --match-set portguard-r6 src,dst,dst "
        "-j REJECT --reject-with tcp-reset"
    )
    assert rules[lookups[1]].endswith("--match-set portguard-d6 src,dst,dst -j DROP")
    assert not any("--match-set" in rule for rule in chain_rules(spec(), "iptables"))


def test_the_lookup_rules_count_as_deny_cache_answers() -> None:
    rules = chain_rules(CACHED, "iptables")
    listing = "-N PORTGUARD\n" + "\n".join(f"{rule} -c 5 300" for rule in rules)
    table = parse_filter_table(listing)
    counted = drop_counters("iptables", table, CACHED)
    assert counted["deny_cache"] == 5 * 2  # reject and drop, one port group


def test_install_creates_the_sets_before_the_rules_and_remove_destroys_them_after() -> None:
    runner = FakeRunner({("ipset", "list", "-n"): (0, "\n".join(all_sets()) + "\nother\n", "")})
    backend = IptablesBackend(runner)
    backend.install(CACHED)
    programs = [argv[0] for argv, _ in runner.calls if argv[0] != "iptables" and argv[1] != "-w"]
    assert programs[0] == "ipset" and runner.calls[0][0] == ("ipset", "-exist", "restore")
    runner.calls.clear()
    backend.remove()
    destroy = [stdin for argv, stdin in runner.calls if argv == ("ipset", "restore")]
    assert destroy == ["".join(f"destroy {name}\n" for name in all_sets())]  # not "other"
    assert runner.calls[-1][0] == ("ipset", "restore")


def test_missing_sets_are_a_status_problem_and_stale_ones_too() -> None:
    assert set_problems(set(all_sets()), CACHED) == []
    assert set_problems(set(all_sets()) - {"portguard-d6"}, CACHED) == [
        "ipset: no set portguard-d6"
    ]
    assert set_problems({"portguard-r4"}, spec()) == [
        "ipset: set portguard-r4 without the deny cache"
    ]
    assert set_problems(set(), None) == []


def test_a_rotation_swaps_reads_the_spares_and_flushes_them() -> None:
    runner = FakeRunner({("ipset", "list", "-o", "save", "portguard-r4-spare"): (0, LISTING, "")})
    cache = IpsetCache(runner)
    cache.rotate()
    hits = cache.read_frozen()
    cache.flush_frozen()
    swaps = "".join(f"swap portguard-{s} portguard-{s}-spare\n" for s in ("r4", "d4", "r6", "d6"))
    assert runner.calls[0] == (("ipset", "restore"), swaps)
    assert hits[(4, 0x64400A0A, 0xC6336419, 25)] == 17999
    listed = [argv[-1] for argv, _ in runner.calls if argv[:2] == ("ipset", "list")]
    assert listed == [f"{name}-spare" for name in ("portguard-r4", "portguard-d4",
                                                   "portguard-r6", "portguard-d6")]  # fmt: skip
    assert runner.calls[-1][1] == "".join(
        f"flush portguard-{s}-spare\n" for s in ("r4", "d4", "r6", "d6")
    )


def test_no_ipset_program_means_no_sets() -> None:
    assert IpsetCache(FakeRunner({("ipset",): (127, "", "not found")})).present() == set()
