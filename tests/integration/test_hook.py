"""The hook backends against the real kernel, each test inside its own network namespace."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Netns, netns_fixture  # noqa: F401 - the netns fixture

from portguard.io.hooks import nftcache
from portguard.io.hooks.backend import HookSpec, SourceLimit
from portguard.io.hooks.factory import cleanup_leftovers
from portguard.io.hooks.iptables import CHAIN, IptablesBackend, chain_rules
from portguard.io.hooks.nftables import (
    PROBE_RULESET,
    NftablesBackend,
    queue_statement,
    queue_supported,
)

pytestmark = pytest.mark.integration

DEFAULT = HookSpec(
    queue_num=0, workers=1, ports=(25, 465, 587), chains=("forward",), fail_open=False
)
BOTH = HookSpec(
    queue_num=2, workers=2, ports=(25, 587), chains=("forward", "output"), fail_open=True
)
LIMITED = HookSpec(0, 1, (25, 465, 587), ("forward",), False, SourceLimit(200, 1000, 64))
LIMITED_BOTH = HookSpec(2, 2, (25, 587), ("forward", "output"), True, SourceLimit(50, 10, 56))
FAMILIES = ("iptables", "ip6tables")
LEGACY_TOOLS = [f"{f}{s}" for f in FAMILIES for s in ("", "-save", "-restore")]


@pytest.fixture(params=["iptables-nft", "iptables-legacy"])
def iptables_ns(
    request: pytest.FixtureRequest,
    netns: Netns,
    tmp_path: Path,
) -> Iterator[Netns]:
    """The namespace, with ``iptables`` meaning the nf_tables or the legacy variant."""
    if request.param == "iptables-nft":
        yield netns
        return
    legacy = shutil.which("xtables-legacy-multi")
    if legacy is None:
        pytest.skip("xtables-legacy-multi is not installed")
    for tool in LEGACY_TOOLS:
        (tmp_path / tool).symlink_to(legacy)
    yield Netns(netns.name, path=f"{tmp_path}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}")


def jumps(ns: Netns, family: str) -> list[str]:
    return [
        line for line in ns.run(family, "-w", "-S").splitlines() if line.endswith(f"-j {CHAIN}")
    ]


def saved(ns: Netns) -> str:
    return ns.run("iptables-save") + ns.run("ip6tables-save")


def test_iptables_install_twice_leaves_one_rule_set(iptables_ns: Netns) -> None:
    backend = IptablesBackend(iptables_ns.runner)
    backend.install(BOTH)
    backend.install(BOTH)
    status = backend.status(BOTH)
    assert (status.installed, status.complete, status.rule_sets) == (True, True, 1), status.detail
    for family in FAMILIES:
        assert jumps(iptables_ns, family) == [
            f"-A FORWARD -p tcp -j {CHAIN}",
            f"-A OUTPUT -p tcp -j {CHAIN}",
        ]
        listed = iptables_ns.run(family, "-w", "-S", CHAIN).splitlines()
        assert tuple(listed[1:]) == chain_rules(BOTH)


def test_iptables_reinstall_follows_a_changed_config(iptables_ns: Netns) -> None:
    backend = IptablesBackend(iptables_ns.runner)
    backend.install(BOTH)
    backend.install(DEFAULT)
    assert backend.status(DEFAULT).complete
    assert not backend.status(BOTH).complete
    for family in FAMILIES:
        assert jumps(iptables_ns, family) == [f"-A FORWARD -p tcp -j {CHAIN}"]
        assert "--queue-num 0" in iptables_ns.run(family, "-w", "-S", CHAIN)


def test_iptables_keeps_operator_rules_and_goes_first(iptables_ns: Netns) -> None:
    for family, net in (("iptables", "198.51.100.0/24"), ("ip6tables", "2001:db8::/32")):
        iptables_ns.run(family, "-w", "-A", "FORWARD", "-s", net, "-j", "DROP")
    backend = IptablesBackend(iptables_ns.runner)
    backend.install(DEFAULT)
    forward = iptables_ns.run("iptables", "-w", "-S", "FORWARD").splitlines()
    assert forward[1:] == [f"-A FORWARD -p tcp -j {CHAIN}", "-A FORWARD -s 198.51.100.0/24 -j DROP"]
    backend.remove()
    assert iptables_ns.run("ip6tables", "-w", "-S", "FORWARD").splitlines()[1:] == [
        "-A FORWARD -s 2001:db8::/32 -j DROP"
    ]


def test_iptables_remove_leaves_nothing_and_may_repeat(iptables_ns: Netns) -> None:
    backend = IptablesBackend(iptables_ns.runner)
    backend.install(BOTH)
    iptables_ns.run("iptables", "-w", "-I", "OUTPUT", "1", "-p", "tcp", "-j", CHAIN)  # a duplicate
    assert backend.status().rule_sets == 2
    backend.remove()
    assert CHAIN not in saved(iptables_ns)
    backend.remove()
    status = backend.status()
    assert (status.installed, status.rule_sets) == (False, 0)


def test_cleanup_after_a_crash_removes_both_backends(netns: Netns) -> None:
    IptablesBackend(netns.runner).install(DEFAULT)
    # What a crashed nft install would leave, minus the queue statement this kernel may lack.
    text = NftablesBackend().render(DEFAULT).replace(queue_statement(DEFAULT), "counter")
    netns.run("nft", "-f", "-", stdin=text)
    assert NftablesBackend(netns.runner).status().installed
    assert cleanup_leftovers(netns.runner) == ("nftables", "iptables")
    assert CHAIN not in saved(netns)
    assert "portguard" not in netns.run("nft", "list", "ruleset")
    assert cleanup_leftovers(netns.runner) == ()


def test_nft_status_reads_a_real_listing(netns: Netns) -> None:
    text = NftablesBackend().render(BOTH).replace(queue_statement(BOTH), "counter")
    netns.run("nft", "-f", "-", stdin=text)
    status = NftablesBackend(netns.runner).status(BOTH)
    assert status.installed and not status.complete
    assert "forward (hook forward, 11 rules), output (hook output, 11 rules)" in status.detail
    assert "chain forward has 0 queue rules" in status.detail
    NftablesBackend(netns.runner).remove()
    NftablesBackend(netns.runner).remove()
    assert not NftablesBackend(netns.runner).status().installed


def test_per_source_limit_installs_and_status_reads_its_counters(netns: Netns) -> None:
    """Both backends take the per-source rules (nft: with `counter` for the queue statement
    this kernel may lack) and report complete hooks and their drop counters."""
    backend = IptablesBackend(netns.runner)
    backend.install(LIMITED)
    status = backend.status(LIMITED)
    assert status.complete, status.detail
    assert status.counters == {"per_source": 0, "invalid": 0, "deny_cache": 0}
    backend.remove()
    text = NftablesBackend().render(LIMITED).replace(queue_statement(LIMITED), "counter")
    netns.run("nft", "-f", "-", stdin=text)
    status = NftablesBackend(netns.runner).status(LIMITED)
    assert status.counters == {"per_source": 0, "invalid": 0, "deny_cache": 0}
    assert "no counter" not in status.detail and "13 rules" in status.detail
    NftablesBackend(netns.runner).remove()


def nft_check(ns: Netns, text: str) -> tuple[int, str]:
    result = ns.runner(["nft", "-c", "-f", "-"], text)
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    "spec",
    [DEFAULT, BOTH, HookSpec(9, 1, (465,), ("output",), True), LIMITED, LIMITED_BOTH],
)
def test_nft_ruleset_passes_the_kernel_check(netns: Netns, spec: HookSpec) -> None:
    text = NftablesBackend().render(spec)
    assert nft_check(netns, text.replace(queue_statement(spec), "counter")) == (0, "")
    returncode, stderr = nft_check(netns, text)
    if queue_supported(netns.runner):
        assert (returncode, stderr) == (0, "")
        return
    errors = [line for line in stderr.splitlines() if "Error:" in line]
    assert returncode != 0 and len(errors) == len(spec.chains)
    assert all("Could not process rule" in line for line in errors)
    assert stderr.count(queue_statement(spec)) == len(spec.chains)  # the failing rule, echoed


def test_probe_agrees_with_a_real_install(netns: Netns) -> None:
    supported = queue_supported(netns.runner)
    assert netns.run("nft", "list", "ruleset") == ""  # the probe only checks
    applied = netns.runner(["nft", "-f", "-"], PROBE_RULESET).returncode == 0
    assert supported == applied


def test_nft_install_twice_and_remove(netns: Netns) -> None:
    if not queue_supported(netns.runner):
        pytest.skip("this kernel refuses the nft queue statement (no CONFIG_NFT_QUEUE)")
    backend = NftablesBackend(netns.runner)
    backend.install(BOTH)
    backend.install(BOTH)
    status = backend.status(BOTH)
    assert (status.installed, status.complete, status.rule_sets) == (True, True, 1), status.detail
    assert netns.run("nft", "list", "tables").count("portguard") == 1
    backend.remove()
    assert "portguard" not in netns.run("nft", "list", "ruleset")


def test_iptables_install_puts_the_jump_back_on_top(iptables_ns: Netns) -> None:
    backend = IptablesBackend(iptables_ns.runner)
    backend.install(DEFAULT)
    for family in FAMILIES:  # another tool inserts an ACCEPT above portguard's jump
        iptables_ns.run(family, "-w", "-I", "FORWARD", "1", "-p", "tcp", "-j", "ACCEPT")
    backend.install(DEFAULT)
    for family in FAMILIES:
        rules = [line for line in iptables_ns.run(family, "-w", "-S", "FORWARD").splitlines()
                 if line.startswith("-A")]  # fmt: skip
        assert rules == ["-A FORWARD -p tcp -j PORTGUARD", "-A FORWARD -p tcp -j ACCEPT"]
    backend.remove()


CACHED = HookSpec(0, 1, (25, 465, 587), ("forward",), False, SourceLimit(200, 1000, 64), True)


def test_the_deny_cache_installs_rotates_and_goes_with_iptables(iptables_ns: Netns) -> None:
    """The real ipsets: created before the rules, swapped, listed and flushed by a rotation,
    destroyed by remove; a missing set is a status problem."""
    backend = IptablesBackend(iptables_ns.runner)
    backend.install(CACHED)
    status = backend.status(CACHED)
    assert status.complete, status.detail
    iptables_ns.run("ipset", "add", "portguard-r4", "100.64.10.10,tcp:25,198.51.100.25",
                    "packets", "6")  # fmt: skip
    backend.cache.rotate()
    assert backend.cache.read_frozen() == {(4, 0x64400A0A, 0xC6336419, 25): 5}
    assert "198.51.100.25" not in iptables_ns.run("ipset", "list", "portguard-r4")
    backend.cache.flush_frozen()
    assert backend.cache.read_frozen() == {}
    iptables_ns.run("ipset", "destroy", "portguard-d6-spare")  # no rule names a spare
    assert "ipset: no set portguard-d6-spare" in backend.status(CACHED).detail
    backend.remove()
    assert "portguard" not in iptables_ns.run("ipset", "list", "-n")
    assert not backend.status().installed


def test_the_deny_cache_installs_and_rotates_with_nftables(netns: Netns) -> None:
    """The real table (with `counter` for the queue statement this kernel may lack): the map
    switches generations in one transaction, the frozen hits are read and flushed."""
    text = NftablesBackend().render(CACHED).replace(queue_statement(CACHED), "counter")
    netns.run("nft", "-f", "-", stdin=text)
    netns.run("nft", "add", "element", "inet", "portguard", "cache_hits4_a",
              "{ 100.64.10.10 . 198.51.100.25 . 25 counter packets 4 bytes 240 }")  # fmt: skip
    cache = nftcache.NftCache(netns.runner)
    cache.rotate()
    assert "jump cache_b" in netns.run("nft", "list", "map", "inet", "portguard", "cache_gen")
    assert cache.read_frozen() == {(4, 0x64400A0A, 0xC6336419, 25): 4}
    cache.flush_frozen()
    assert cache.read_frozen() == {}
    cache.rotate()  # and back
    assert "jump cache_a" in netns.run("nft", "list", "map", "inet", "portguard", "cache_gen")
    status = NftablesBackend(netns.runner).status(CACHED)
    assert "chain cache_a" not in status.detail and status.counters["deny_cache"] == 0
    NftablesBackend(netns.runner).remove()
