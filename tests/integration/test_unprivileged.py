"""The real daemon as the systemd unit runs it: an unprivileged user holding only CAP_NET_ADMIN.

`setpriv` drops to a throwaway system user with CAP_NET_ADMIN as its only capability (bounding,
permitted, effective, inheritable and ambient sets), as `User=` plus `AmbientCapabilities=` and
`CapabilityBoundingSet=` do in systemd/portguard.service. The daemon then binds its queue,
installs its hooks (iptables-nft or nft), decides, logs and removes its hooks on SIGTERM (or keeps
them, with `keep_on_stop`). The last test adds the unit's seccomp filters (SystemCallFilter=,
RestrictAddressFamilies=, MemoryDenyWriteExecute=, loaded with libseccomp as systemd does) and a
read-only /proc/sys (ProtectKernelTunables=), for a machine whose PID 1 is not systemd.

The interpreter or the checkout may sit below a directory the user may not enter (a Python under
/root): then the daemon runs in a private mount namespace where such a directory is covered by an
empty tmpfs that holds only the needed entries, bound back (`unveil`). Nothing outside changes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import portguard
from lab import Lab
from lab import addresses as a
from lab.daemon import SHIPPED_RULES, LabDaemon, hooks_installed, hooks_leftover
from lab.netns import LabError
from portguard.io.queuestats import QUEUE_STATS_FILE, parse_queue_stats
from portguard.service.daemon import HOOK_CHECK_INTERVAL

CAP_NET_ADMIN = 12
ROOT = Path(portguard.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    """A throwaway system user (and its group), removed afterwards."""
    name = f"pgt-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        if subprocess.run(["userdel", name], capture_output=True).returncode != 0:
            subprocess.run(["userdel", "--force", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)  # if userdel left it


@pytest.fixture(scope="module")
def stage() -> Iterator[Path]:
    """Mount points for `unveil` (empty directories: the mounts live in the daemon's namespace)."""
    path = Path(tempfile.mkdtemp(prefix="pgt-stage-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def blocked(paths: Sequence[Path]) -> dict[Path, list[str]]:
    """Directories on the way to `paths` that others may not enter, with the entries needed."""
    steps: dict[Path, list[str]] = {}
    for path in paths:
        for parent in reversed(path.parents):
            child = path.relative_to(parent).parts[0]
            if not parent.stat().st_mode & stat.S_IXOTH and child not in steps.get(parent, []):
                steps.setdefault(parent, []).append(child)
    return steps


def unveil(
    paths: Sequence[Path], stage: Path, read_only: Sequence[Path] = (), proc: str = ""
) -> list[str]:
    """argv prefix: a private mount namespace where the user can reach `paths` (and cannot
    write to `read_only`; with `proc`, a /proc of its own mounted with those options), then exec."""
    steps = sorted(blocked(paths).items(), key=lambda step: len(step[0].parts))
    binds = [(parent / child, stage / str(n)) for n, (parent, child) in
             enumerate((p, c) for p, children in steps for c in children)]  # fmt: skip
    script = ["set -e"]
    for source, point in binds:  # first: everything is still reachable under its own name
        point.mkdir()
        script.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(point))}")
    staged = dict(binds)
    for parent, children in steps:
        script.append(f"mount -t tmpfs -o mode=0755,size=1m pgt-unveil {shlex.quote(str(parent))}")
        for child in children:
            target = shlex.quote(str(parent / child))
            script.append(f"mkdir {target}")
            script.append(f"mount --bind {shlex.quote(str(staged[parent / child]))} {target}")
    if proc:
        script.append(f"mount -t proc -o {shlex.quote(proc)} proc /proc")
    script += [f"mount -o bind,ro {shlex.quote(str(p))} {shlex.quote(str(p))}" for p in read_only]
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private",
            "sh", "-c", "\n".join(script), "unveil"]  # fmt: skip


def reachable(daemon: LabDaemon) -> list[Path]:
    """What the daemon process must reach: the interpreter, its libraries, the code, its files."""
    paths = [Path(sys.executable).resolve(), Path(sys.prefix), Path(sys.base_prefix), ROOT,
             SHIPPED_RULES, daemon.dir]  # fmt: skip
    return [path.resolve() for path in paths]


def setpriv(user: pwd.struct_passwd) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin", "--no-new-privs"]  # fmt: skip


def unprivileged_daemon(
    lab: Lab,
    user: pwd.struct_passwd,
    stage: Path,
    hook_options: str = "",
    sandbox: Sequence[str] = (),
    workers: int = 1,
    read_only: Sequence[Path] = (),
    proc: str = "",
) -> LabDaemon:
    """A LabDaemon (not started) that runs as `user`, its directory and sockets its own;
    `sandbox` goes between setpriv and the daemon (it must exec its arguments)."""
    daemon = LabDaemon(lab, command=[sys.executable, "-m", "portguard"], workers=workers)
    if hook_options:
        text = daemon.config.read_text()
        daemon.config.write_text(text.replace("\n\n[rules]", f"\n{hook_options}\n\n[rules]", 1))
    os.chown(daemon.dir, user.pw_uid, user.pw_gid)  # logs and the control socket go here
    os.chown(daemon.dir / "notify.sock", user.pw_uid, user.pw_gid)  # sending needs write access
    point = Path(tempfile.mkdtemp(dir=stage))
    daemon.command = [*unveil(reachable(daemon), point, read_only, proc), *setpriv(user), *sandbox,
                      sys.executable, "-m", "portguard"]  # fmt: skip
    return daemon


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def lifecycle(daemon: LabDaemon, action: str) -> list[dict[str, Any]]:
    return [
        e for e in daemon.events()
        if e["event"].get("dataset") == "portguard.lifecycle" and e["event"]["action"] == action
    ]  # fmt: skip


def stop_and_wait(daemon: LabDaemon) -> int | None:
    code = daemon.stop()
    deadline = time.monotonic() + 3  # the log process writes the last events as it exits
    while not lifecycle(daemon, "stop") and time.monotonic() < deadline:
        time.sleep(0.05)
    return code


def remove_hooks(lab: Lab, daemon: LabDaemon) -> subprocess.CompletedProcess[str]:
    argv = lab.python("portguard", "hook", "remove", "--config", str(daemon.config))
    return lab.run("gw", argv, capture_output=True, text=True, timeout=60)


def test_runs_with_only_cap_net_admin_and_enforces_the_shipped_policy(
    lab: Lab, user: pwd.struct_passwd, stage: Path
) -> None:
    daemon = unprivileged_daemon(lab, user, stage)
    try:
        daemon.start()
        assert daemon.proc is not None
        status = proc_status(daemon.proc.pid)  # `ip netns exec`, unshare, sh, setpriv all exec
        assert "portguard" in Path(f"/proc/{daemon.proc.pid}/cmdline").read_text()
        assert status["Uid"].split() == [str(user.pw_uid)] * 4
        assert status["Gid"].split() == [str(user.pw_gid)] * 4
        assert status["Groups"] == ""
        for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == 1 << CAP_NET_ADMIN, (field, status[field])
        assert status["NoNewPrivs"] == "1"
        assert hooks_installed(lab)
        for version in (4, 6):
            refused = lab.send_mail("sub", a.MX.family(version), 25, timeout=3)
            assert refused.outcome == "refused", refused
            assert lab.send_mail("sub", a.SMARTHOST.family(version), 25).outcome == "delivered"
        decided = [e for e in daemon.events() if e["event"].get("dataset") == "portguard.decision"]
        assert {(e["rule"]["id"], e["event"]["action"]) for e in decided} >= {
            ("block-25", "reject"), ("smarthost", "allow")
        }  # fmt: skip
    finally:
        code = stop_and_wait(daemon)
    assert code == 0, daemon.stderr_tail()
    assert not hooks_leftover(lab), "SIGTERM must remove every hook"
    assert lifecycle(daemon, "hook-removed") and lifecycle(daemon, "stop")
    assert (daemon.dir / "decisions.jsonl").stat().st_uid == user.pw_uid


def test_keep_on_stop_keeps_the_ports_closed_while_stopped(
    lab: Lab, user: pwd.struct_passwd, stage: Path
) -> None:
    first = unprivileged_daemon(lab, user, stage, "keep_on_stop = true")
    second = unprivileged_daemon(lab, user, stage, "keep_on_stop = true")
    try:
        first.start()
        assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"
        assert stop_and_wait(first) == 0, first.stderr_tail()
        assert lifecycle(first, "hook-kept") and not lifecycle(first, "hook-removed")
        assert hooks_installed(lab) and lab.queue_stats() is None  # hooked, nobody deciding
        stopped = lab.send_mail("sub", a.SMARTHOST.v4, 25, timeout=2)
        assert stopped.outcome == "timeout", stopped  # fail_mode closed: the SYN is dropped
        second.start()  # installs over the kept hooks
        assert lab.send_mail("sub", a.SMARTHOST.v6, 25).outcome == "delivered"
        assert lab.send_mail("sub", a.MX.v6, 25, timeout=3).outcome == "refused"
        assert second.proc is not None
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(15) == 0, second.stderr_tail()
        assert hooks_installed(lab)
    finally:
        first.stop()
        second.stop()
        removed = remove_hooks(lab, second)
    assert removed.returncode == 0, removed.stderr
    assert not hooks_leftover(lab)
    assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"  # no hook: open


# --- the unit's system call sandbox ---------------------------------------------------------

UNIT = ROOT / "systemd" / "portguard.service"
# loads the unit's filters with libseccomp, as systemd does, then execs argv[3:]
SECCOMP_LAUNCHER = """
import ctypes, errno, os, sys
ALLOW, ERRNO, EQ, GE, MASKED_EQ = 0x7FFF0000, 0x00050000, 4, 5, 7
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
def load(default, rules):
    ctx = lib.seccomp_init(default)
    for action, name, cmps in rules:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number != -1 and lib.seccomp_rule_add_array(
                ctx, action, number, len(cmps), (Cmp * max(1, len(cmps)))(*cmps)) < 0:
            sys.exit("seccomp: cannot add " + name)
    if lib.seccomp_load(ctx) < 0:
        sys.exit("seccomp: cannot load")
allowed, families = sys.argv[1].split(), {int(f) for f in sys.argv[2].split()}
eperm, wx, x = ERRNO | errno.EPERM, 0x6, 0x4
load(ALLOW, [(eperm, "mmap", [Cmp(2, MASKED_EQ, wx, wx)]),
             (eperm, "mprotect", [Cmp(2, MASKED_EQ, x, x)]),
             (eperm, "pkey_mprotect", [Cmp(2, MASKED_EQ, x, x)]),
             (eperm, "shmat", [Cmp(2, MASKED_EQ, 0o100000, 0o100000)])])
refused = ERRNO | errno.EAFNOSUPPORT
load(ALLOW, [(refused, "socket", [Cmp(0, EQ, f, 0)]) for f in range(64) if f not in families]
     + [(refused, "socket", [Cmp(0, GE, 64, 0)])])
load(eperm, [(ALLOW, name, []) for name in allowed])
os.execv(sys.argv[3], sys.argv[3:])
"""


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """The [Service] settings of a unit file, each with all its values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """systemd's named system call sets (`systemd-analyze syscall-filter`), one level deep."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        word = line.strip()
        if line.startswith("@"):
            current = groups.setdefault(word, [])
        elif word and not word.startswith("#"):
            current.append(word)
    return groups


def expand(entries: Sequence[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for entry in entries:
        names |= expand(groups[entry], groups) if entry.startswith("@") else {entry}
    return names


def allowed_syscalls(filters: Sequence[str], groups: dict[str, list[str]]) -> set[str]:
    """What SystemCallFilter= lines allow: an allow list (plus @default), then ~ removals."""
    assert filters and not filters[0].startswith("~"), "the unit's filter is an allow list"
    allowed = expand(["@default"], groups)
    for line in filters:
        if line.startswith("~"):
            allowed -= expand(line[1:].split(), groups)
        else:
            allowed |= expand(line.split(), groups)
    return allowed


def unit_sandbox() -> list[str]:
    """argv prefix applying the unit's SystemCallFilter=, RestrictAddressFamilies= and
    MemoryDenyWriteExecute= (the last always on: the test checks the unit asks for it)."""
    settings = unit_settings()
    assert settings["MemoryDenyWriteExecute"] == ["yes"]
    assert settings["SystemCallErrorNumber"] == ["EPERM"]
    allowed = allowed_syscalls(settings["SystemCallFilter"], syscall_groups())
    names = " ".join(settings["RestrictAddressFamilies"]).split()
    families = [str(int(getattr(socket, name))) for name in names]
    return [sys.executable, "-c", SECCOMP_LAUNCHER, " ".join(sorted(allowed)), " ".join(families)]


def sandboxed(lab: Lab, user: pwd.struct_passwd, stage: Path, workers: int = 1) -> LabDaemon:
    """The unit's sandbox, as far as it matters to the daemon: seccomp filters, read-only
    /proc/sys (ProtectKernelTunables=), /proc with hidepid=invisible (ProtectProc=)."""
    return unprivileged_daemon(lab, user, stage, sandbox=unit_sandbox(), workers=workers,
                               read_only=[Path("/proc/sys")], proc="hidepid=invisible")  # fmt: skip


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("workers", [1, 2])
def test_runs_inside_the_units_sandbox(
    lab: Lab, user: pwd.struct_passwd, stage: Path, workers: int
) -> None:
    """The daemon starts, decides, reloads and stops cleanly. A second one on the same queue
    fails to bind it and leaves the first one's hooks alone."""
    daemon, rival = sandboxed(lab, user, stage, workers), sandboxed(lab, user, stage)
    off = ["net.netfilter.nf_conntrack_acct=0", "net.netfilter.nf_conntrack_timestamp=0"]
    lab.run("gw", ["sysctl", "-q", "-w", *off], check=True)  # earlier daemons switched them on
    try:
        daemon.start()
        assert daemon.proc is not None
        assert proc_status(daemon.proc.pid)["Seccomp"] == "2"  # filter mode
        assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome == "refused"
        assert lab.send_mail("sub", a.SMARTHOST.v6, 25).outcome == "delivered"
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(lifecycle(daemon, "reload")) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(lifecycle(daemon, "reload")) == workers
        with contextlib.suppress(LabError):  # its start may also be taken for the first's
            rival.start()
        assert rival.proc is not None and rival.proc.wait(15) == 1
        assert "cannot bind kernel queue 0" in rival.stderr_tail()  # /proc's counters: root only
        time.sleep(HOOK_CHECK_INTERVAL + 0.5)
        assert not lifecycle(daemon, "hook-repaired"), "the rival touched the running hooks"
        assert lab.send_mail("sub", a.MX.v6, 25, timeout=3).outcome == "refused"
    finally:
        rival.stop()
        code = stop_and_wait(daemon)
    assert code == 0, daemon.stderr_tail()
    assert not hooks_leftover(lab)
    assert "Operation not permitted" not in daemon.stderr_tail(200)
    messages = [str(e.get("message", "")) for e in daemon.events()]  # /proc/sys is read-only:
    assert any("nf_conntrack_acct" in m and "Read-only" in m for m in messages)  # it only warns


@pytest.mark.parametrize(
    ("options", "visible"), [("hidepid=invisible", True), ("hidepid=invisible,subset=pid", False)]
)
def test_proc_subset_pid_would_hide_the_queue_counters(
    lab: Lab, options: str, visible: bool
) -> None:
    """ProtectProc=invisible leaves the kernel's queue counters readable; ProcSubset=pid hides
    them, /proc/self/net/netfilter included (and with them the start-up check for a queue that
    another process holds, and the counters of `portguard status`): the unit must not set it."""
    daemon = LabDaemon(lab)
    try:
        daemon.start()
        script = f"mount -t proc -o {options} proc /proc && cat {QUEUE_STATS_FILE}"
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        seen = lab.run("gw", argv, capture_output=True, text=True, timeout=30)
    finally:
        daemon.stop()
    assert (seen.returncode == 0) is visible, seen.stderr
    assert (parse_queue_stats(seen.stdout, 0) is not None) is visible


def test_the_queue_counters_are_for_root_only(lab: Lab, user: pwd.struct_passwd) -> None:
    """The kernel makes nfnetlink_queue 0440 root: the daemon's user, CAP_NET_ADMIN or not,
    cannot read the queue counters (root's `portguard status` and start-up check can)."""
    argv = [*setpriv(user), "cat", str(QUEUE_STATS_FILE)]
    daemon = LabDaemon(lab)
    try:
        daemon.start()
        as_user = lab.run("gw", argv, capture_output=True, text=True, timeout=30)
        as_root = lab.run("gw", ["cat", str(QUEUE_STATS_FILE)], capture_output=True, text=True)
    finally:
        daemon.stop()
    assert as_user.returncode != 0 and "Permission denied" in as_user.stderr
    assert parse_queue_stats(as_root.stdout, 0) is not None
