"""WAN interface lookup: cached, unknown indexes are not WAN, forget() re-resolves."""

from __future__ import annotations

from portguard.io.interfaces import WanInterfaces


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
