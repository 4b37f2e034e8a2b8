"""The Debian package and `make install`, built and installed for real (root).

`make deb` builds version A from this tree and version B (A+test2) from a copy whose shipped
rule and list files differ. A is installed with apt, `portguard check` passes on its shipped
config (as root and as the portguard user), the operator edits rules.d/10-isp.toml, B is
installed over it with --force-confold (an operator answering "keep"): the edit stays, dpkg
writes B's version next to it as .dpkg-dist, the unedited list file takes B's version, and the
command reports B. A purge removes /opt/portguard, /etc/portguard and the package; it runs in a
finally block whatever happened.

The daemon is never started: the package only enables the unit (dh_installsystemd --no-start),
an upgrade try-restarts it only where systemd runs and only when it already runs; on a machine
with a running systemd, a policy-rc.d that refuses every action is also in place for the test.

`make install` runs into a scratch DESTDIR (nothing outside it is touched) twice: the second run
keeps an edited rule file and writes the shipped one next to it as .dist.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from portguard import __version__

ROOT = Path(__file__).resolve().parents[2]
VERSION_A = __version__
VERSION_B = f"{__version__}+test2"
OPT = Path("/opt/portguard")
ETC = Path("/etc/portguard")
EDITED_RULES = ETC / "rules.d" / "10-isp.toml"
LIST_FILE = ETC / "rules.d" / "lists" / "business.txt"
OPERATOR_EDIT = "# operator's note: kept across upgrades\n"
B_RULES_LINE = "# shipped with version B\n"
B_LIST_LINE = "192.0.2.0/24\n"  # a valid list entry, so `portguard check` still passes
POLICY_RC = Path("/usr/sbin/policy-rc.d")
COPY_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "__pycache__", ".*_cache", ".hypothesis"
)

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg") is None or shutil.which("apt-get") is None,
    reason="not a Debian system: dpkg-buildpackage and apt cannot work here",
)


@dataclass(frozen=True)
class Debs:
    a: Path
    b: Path


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command (outside any venv, apt never asking); fail the test with its output."""
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def make_deb(tree: Path, version: str, out: Path, build: Path) -> Path:
    run(
        [
            "make",
            "-C",
            str(tree),
            "--no-print-directory",
            "deb",
            f"DEB_VERSION={version}",
            f"DEB_OUT={out}",
            f"DEB_BUILD_DIR={build}",
        ]
    )
    shutil.rmtree(build)  # the build tree (~100 MB): only the .deb is needed
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    deb = out / f"portguard_{version}_{arch}.deb"
    assert deb.is_file(), f"make deb did not write {deb}"
    return deb


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """Version A from this tree, version B from a copy with changed shipped rule files."""
    work = tmp_path_factory.mktemp("deb")
    a = make_deb(ROOT, VERSION_A, work / "out", work / "build-a")
    tree = work / "tree-b"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=COPY_IGNORED)
    with (tree / "portguard/shipped/rules/10-isp.toml").open("a") as rules:
        rules.write(B_RULES_LINE)
    with (tree / "portguard/shipped/rules/lists/business.txt").open("a") as names:
        names.write(B_LIST_LINE)
    b = make_deb(tree, VERSION_B, work / "out", work / "build-b")
    return Debs(a, b)


def field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def member(deb: Path, path: str) -> str:
    """The text of one file in the package."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        extracted = archive.extractfile(f".{path}")
        assert extracted is not None, f"{path} is not a file in {deb.name}"
        return extracted.read().decode("utf-8")


def package_listing(deb: Path) -> dict[str, str]:
    """Path -> the tar listing's type letter ('-' file, 'd' directory, 'l' link)."""
    listing: dict[str, str] = {}
    for line in run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines():
        parts = line.split()
        path = parts[5].removeprefix(".").rstrip("/") or "/"
        listing[path] = parts[0][0]
    return listing


# --- the built package ------------------------------------------------------------------------


def test_deb_fields_and_conffiles(debs: Debs) -> None:
    assert field(debs.a, "Package") == "portguard"
    assert field(debs.a, "Version") == VERSION_A
    assert field(debs.b, "Version") == VERSION_B
    depends = [" ".join(item.split()) for item in field(debs.a, "Depends").split(",")]
    for needed in (
        "python3 (>= 3.11)",
        "iptables | nftables",
        "iproute2",
        "conntrack",
        "adduser | systemd",
    ):
        assert needed in depends
    # dpkg-gencontrol merges the control file's entry with the one dh_shlibdeps found
    assert any(item.startswith("libnetfilter-queue1 (>= ") for item in depends)
    assert any(item.startswith("python3 (<< 3.") for item in depends)
    conffiles = run(["dpkg-deb", "-I", str(debs.a), "conffiles"]).stdout.split()
    assert sorted(conffiles) == sorted(
        [
            "/etc/logrotate.d/portguard",
            "/etc/portguard/portguard.toml",
            "/etc/portguard/rules.d/10-isp.toml",
            "/etc/portguard/rules.d/lists/business.txt",
        ]
    )


def test_deb_holds_a_relocated_venv_and_the_unit(debs: Debs) -> None:
    listing = package_listing(debs.a)
    assert listing["/opt/portguard/bin/portguard"] == "-"
    assert listing["/usr/bin/portguard"] == "l"
    assert listing["/lib/systemd/system/portguard.service"] == "-"
    assert listing["/usr/share/doc/portguard/operations.md"] == "-"  # the unit's Documentation=
    assert not [path for path in listing if "__pycache__" in path or path.endswith(".pyc")]
    # the namespace lab (SYN flooder, SMTP peers, demo) is the source tree's, never a gateway's
    assert not [path for path in listing if "/lab/" in path]
    # the batched queue reader's library, compiled by the build (hatch_build.py)
    assert [path for path in listing if path.endswith("/portguard/io/_nfqbatch.so")]
    assert member(debs.a, "/opt/portguard/bin/portguard").startswith(
        "#!/opt/portguard/bin/python\n"
    )
    assert 'VIRTUAL_ENV="/opt/portguard"' in member(debs.a, "/opt/portguard/bin/activate")
    unit = member(debs.a, "/lib/systemd/system/portguard.service")
    assert unit == (ROOT / "systemd" / "portguard.service").read_text(encoding="utf-8")


# --- install, upgrade, purge ------------------------------------------------------------------


def installed_version() -> str | None:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", "portguard"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not result.stdout.startswith("ii"):
        return None
    return result.stdout.split()[1]


@contextmanager
def package_session() -> Iterator[None]:
    """Refuse to touch a portguard installed outside this test; keep a running systemd from
    starting anything; purge in the end, whatever happened."""
    if installed_version() is not None or OPT.exists() or ETC.exists():
        pytest.skip(
            f"portguard is already installed on this machine ({OPT}, {ETC} or the "
            "package): the test would replace it; remove it first (apt-get purge "
            "portguard, or make uninstall PURGE=1)"
        )
    policy = Path("/run/systemd/system").is_dir() and not POLICY_RC.exists()
    if policy:
        POLICY_RC.write_text("#!/bin/sh\n# portguard's package test: start nothing\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        subprocess.run(
            ["apt-get", "purge", "-y", "-q", "portguard"],
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if policy:
            POLICY_RC.unlink(missing_ok=True)


def apt_install(deb: Path, *options: str) -> None:
    run(["apt-get", "install", "-y", "-q", *options, str(deb)])


def portguard_check(*prefix: str) -> str:
    return run([*prefix, "portguard", "check", "--config", str(ETC / "portguard.toml")]).stdout


def test_install_upgrade_keeping_an_edit_and_purge(debs: Debs) -> None:
    with package_session():
        apt_install(debs.a)
        assert installed_version() == VERSION_A
        assert run(["portguard", "--version"]).stdout.split() == ["portguard", VERSION_A]
        assert "ok" in portguard_check()
        assert run(["id", "-un", "portguard"]).stdout.strip() == "portguard"
        as_daemon_user = ["setpriv", "--reuid=portguard", "--regid=portguard", "--clear-groups"]
        assert "ok" in portguard_check(*as_daemon_user)  # the unit's user reads the config
        assert not Path("/run/systemd/system").is_dir() or not unit_active()

        with EDITED_RULES.open("a") as rules:
            rules.write(OPERATOR_EDIT)
        apt_install(debs.b, "-o", "Dpkg::Options::=--force-confold")
        assert installed_version() == VERSION_B
        assert run(["portguard", "--version"]).stdout.split() == ["portguard", VERSION_B]
        assert EDITED_RULES.read_text(encoding="utf-8").endswith(OPERATOR_EDIT)  # kept
        dist = EDITED_RULES.with_name(EDITED_RULES.name + ".dpkg-dist")
        assert dist.read_text(encoding="utf-8").endswith(B_RULES_LINE)  # B's, beside it
        assert LIST_FILE.read_text(encoding="utf-8").endswith(B_LIST_LINE)  # unedited: B's
        assert "ok" in portguard_check()

        state = Path("/var/lib/portguard")  # the unit's StateDirectory (saved resolutions)
        state.mkdir(exist_ok=True)
        (state / "resolved.json").write_text("{}")
        run(["apt-get", "purge", "-y", "-q", "portguard"])
        assert not OPT.exists()
        assert not ETC.exists()
        assert not state.exists()
        assert not Path("/usr/bin/portguard").exists()
        assert installed_version() is None
        listed = subprocess.run(["dpkg", "-l", "portguard"], capture_output=True, text=True)
        assert not any(line.startswith(("ii", "rc")) for line in listed.stdout.splitlines())


def unit_active() -> bool:
    state = subprocess.run(
        ["systemctl", "is-active", "portguard.service"], capture_output=True, text=True
    )
    return state.stdout.strip() == "active"


# --- make install into a scratch DESTDIR ------------------------------------------------------


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("destdir")
    make_install(root)
    return root


def make_install(root: Path) -> str:
    return run(
        ["make", "-C", str(ROOT), "--no-print-directory", "install", f"DESTDIR={root}"]
    ).stdout


def test_make_install_layout(staged: Path) -> None:
    venv = staged / "opt" / "portguard"
    assert os.readlink(staged / "usr/bin/portguard") == "/opt/portguard/bin/portguard"
    script = (venv / "bin" / "portguard").read_text(encoding="utf-8")
    assert script.startswith("#!/opt/portguard/bin/python\n")  # its final place, not DESTDIR
    version = run([str(venv / "bin" / "python"), "-m", "portguard", "--version"]).stdout
    assert version.split() == ["portguard", VERSION_A]
    assert not list(venv.glob("lib/python3*/site-packages/lab"))  # the lab stays in the tree
    assert list(venv.glob("lib/python3*/site-packages/portguard/io/_nfqbatch.so"))
    unit = (staged / "lib/systemd/system/portguard.service").read_text(encoding="utf-8")
    assert "ExecStart=/usr/bin/portguard run" in unit
    for relative in (
        "sysusers.d/portguard.conf",
        "tmpfiles.d/portguard.conf",
        "sysctl.d/50-portguard.conf",
        "modules-load.d/portguard.conf",
    ):
        assert (staged / "usr/lib" / relative).is_file()
    config = staged / "etc/portguard/portguard.toml"
    assert config.read_bytes() == (ROOT / "portguard/shipped/portguard.toml").read_bytes()
    rules = staged / "etc/portguard/rules.d"
    check = staged / "check.toml"  # the shipped config names /etc: point it into DESTDIR
    check.write_text(f'[rules]\npaths = ["{rules}"]\n', encoding="utf-8")
    assert (
        "5 rules"
        in run(
            [str(venv / "bin" / "python"), "-m", "portguard", "check", "--config", str(check)]
        ).stdout
    )


def test_make_install_installs_what_the_package_does(staged: Path, debs: Debs) -> None:
    # outside the venv and the docs (whose names differ: changelog.gz, copyright)
    packaged = {
        path
        for path, kind in package_listing(debs.a).items()
        if kind != "d" and not path.startswith(("/opt/", "/usr/share/doc/"))
    }
    missing = {
        path
        for path in packaged
        if not (staged / path.lstrip("/")).is_symlink()
        and not (staged / path.lstrip("/")).is_file()
    }
    assert not missing


def test_make_install_again_keeps_an_edit(staged: Path) -> None:
    rules = staged / "etc/portguard/rules.d/10-isp.toml"
    config = staged / "etc/portguard/portguard.toml"
    with rules.open("a") as file:
        file.write(OPERATOR_EDIT)
    output = make_install(staged)
    assert f"kept your edited {rules}" in output
    assert rules.read_text(encoding="utf-8").endswith(OPERATOR_EDIT)
    shipped = (ROOT / "portguard/shipped/rules/10-isp.toml").read_bytes()
    assert rules.with_name("10-isp.toml.dist").read_bytes() == shipped
    assert config.read_bytes() == (ROOT / "portguard/shipped/portguard.toml").read_bytes()
    assert not config.with_name("portguard.toml.dist").exists()
    assert (
        (staged / "opt/portguard/bin/portguard")
        .read_text()
        .startswith("#!/opt/portguard/bin/python\n")
    )
