"""The daemon as the systemd unit runs it (its own user, CAP_NET_ADMIN only) with the nftables
backend on the stock kernel: `nft -f` and the nft queue need nothing more than CAP_NET_ADMIN.

The host suite's helpers (tests/integration/test_unprivileged.py: a throwaway user, setpriv,
unveil) are reused as they are.
"""

from __future__ import annotations

import grp
import pwd
from pathlib import Path

import pytest
from kernel_lab import lifecycle, send, wait_for
from test_unprivileged import (
    CAP_NET_ADMIN,
    proc_status,
    stage,
    stop_and_wait,
    unprivileged_daemon,
)

from lab import Lab
from lab import addresses as a
from lab.daemon import hooks_leftover

__all__ = ["stage"]  # the fixture, imported to be found here
ETC = Path("/etc")


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    """A system user of its own. `useradd` fails in the VM (it cannot write /etc/shadow through
    virtme-ng's overlay), so the entries are appended to /etc/passwd and /etc/group: the VM's
    /etc is a copy-on-write overlay, dropped when the VM stops."""
    used = {entry.pw_uid for entry in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    uid = next(n for n in range(64900, 65000) if n not in used)
    name = f"pgt-kernel-{uid}"
    with (ETC / "passwd").open("a") as passwd:
        passwd.write(f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n")
    with (ETC / "group").open("a") as group:
        group.write(f"{name}:x:{uid}:\n")
    return pwd.getpwnam(name)


def test_only_cap_net_admin_with_the_nftables_backend(
    lab: Lab, user: pwd.struct_passwd, stage: Path
) -> None:
    daemon = unprivileged_daemon(lab, user, stage)
    try:
        daemon.start(timeout=120)
        assert daemon.proc is not None
        status = proc_status(daemon.proc.pid)
        assert status["Uid"].split() == [str(user.pw_uid)] * 4
        for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == 1 << CAP_NET_ADMIN, (field, status[field])
        installed = wait_for("hook-installed", lambda: lifecycle(daemon, "hook-installed"))
        assert installed and installed[-1]["portguard"]["backend"] == "nftables", installed
        for version in (4, 6):
            assert send(lab, "sub", a.MX.family(version), 25, timeout=4).outcome == "refused"
            assert send(lab, "sub", a.SMARTHOST.family(version), 25).outcome == "delivered"
    finally:
        code = stop_and_wait(daemon)
    assert code == 0, daemon.stderr_tail()
    assert lifecycle(daemon, "hook-removed")
    assert not hooks_leftover(lab)
