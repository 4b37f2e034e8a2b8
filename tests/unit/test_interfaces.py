"""WAN interface lookup: cached, unknown indexes are not WAN, forget() re-resolves."""

from __future__ import annotations

from portguard.io.interfaces import WanInterfaces, missing_interfaces, wan_changes


def test_wan_lookup_is_cached_and_refreshable() -> None:
    names = {2: "eth0", 3: "eth1"}
    calls: list[int] = []

    def name_of(index: int) -> str:
        calls.append(index)
        if index not in names:
            raise OSError("no such device")
        return names[index]

    wan = WanInterfaces(["eth0"], name_of)
    assert wan.is_wan(2) and not wan.is_wan(3) and not wan.is_wan(0) and not wan.is_wan(9)
    assert wan.is_wan(2)
    assert calls == [2, 3, 9]
    names[3] = "eth0"  # the interface was recreated under another index
    wan.forget()
    assert wan.is_wan(3)


def test_real_loopback_is_not_wan() -> None:
    assert not WanInterfaces(["eth0"]).is_wan(1)
    assert WanInterfaces(["lo"]).is_wan(1)


def test_missing_interfaces_asks_the_kernel() -> None:
    assert missing_interfaces(["lo", "pgnosuch0", "bad\x00name"]) == ["pgnosuch0", "bad\x00name"]


def test_recheck_reports_missing_and_found_wan_interfaces_once() -> None:
    present = {"eth0": 2}

    def index_of(name: str) -> int:
        if name not in present:
            raise OSError("no such device")
        return present[name]

    wan = WanInterfaces(["eth0", "ppp0"], lambda index: "eth0", index_of)
    [(action, message, names)] = wan.recheck()
    assert (action, names) == ("wan-missing", ["ppp0"]) and "ppp0 does not exist" in message
    assert wan.recheck() == []  # said once, not every round
    present["ppp0"] = 7
    assert wan.recheck() == [("wan-found", "WAN interface ppp0 exists now", ["ppp0"])]
    assert wan.recheck() == []
    del present["ppp0"], present["eth0"]
    assert [(a, n) for a, n in [(c[0], c[2]) for c in wan.recheck()]] == [
        ("wan-missing", ["eth0", "ppp0"])
    ]


def test_a_recheck_that_finds_a_change_forgets_the_cache() -> None:
    present: dict[str, int] = {}

    def index_of(name: str) -> int:
        if name not in present:
            raise OSError("no such device")
        return present[name]

    names = {5: "other"}
    wan = WanInterfaces(["ppp0"], lambda index: names[index], index_of)
    wan.recheck()
    assert not wan.is_wan(5)
    names[5], present["ppp0"] = "ppp0", 5
    wan.recheck()
    assert wan.is_wan(5)


def test_wan_changes_names_what_went_and_what_came() -> None:
    assert wan_changes([], []) == []
    assert [c[0] for c in wan_changes(["a"], ["b"])] == ["wan-missing", "wan-found"]
