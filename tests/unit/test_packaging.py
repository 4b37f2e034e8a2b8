"""packaging/: the Debian source directory, the system files, and the config installer.

Static checks, no root: debian/control's fields, that every file the systemd unit names is
installed by the package, the conffiles (every file under /etc), that the sysctl, sysusers and
tmpfiles files agree with the unit and the daemon, the maintainer scripts' syntax and their
never-start rule, and packaging/install_config.py (what `make install` does to /etc/portguard)
run for real on temporary directories. tests/integration/test_package.py builds, installs,
upgrades and purges the real package.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from portguard.io.ctevents import ACCOUNTING

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
DEBIAN = PACKAGING / "debian"
UNIT = ROOT / "systemd" / "portguard.service"
INSTALL_CONFIG = PACKAGING / "install_config.py"
SHIPPED = ROOT / "portguard" / "shipped"
# absolute programs the unit runs that other packages provide, and the package providing each
PROVIDED_BY = {"/bin/kill": "procps", "/usr/bin/kill": "procps"}
EXPECTED_CONFFILES = {
    "/etc/portguard/portguard.toml",
    "/etc/portguard/rules.d/10-isp.toml",
    "/etc/portguard/rules.d/lists/business.txt",
    "/etc/logrotate.d/portguard",
}


# --- helpers: debian/ files -------------------------------------------------------------------


def deb822(path: Path) -> list[dict[str, str]]:
    """The paragraphs of a deb822 file (debian/control), continuation lines joined."""
    paragraphs: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8").strip()):
        fields: dict[str, str] = {}
        name = ""
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t"):
                fields[name] += "\n" + line.strip()
            else:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def relations(field: str) -> list[str]:
    """A Depends-like field as its comma-separated items, whitespace normalised."""
    return [" ".join(item.split()) for item in field.replace("\n", " ").split(",") if item.strip()]


def package() -> dict[str, str]:
    return deb822(DEBIAN / "control")[1]


def installed_paths() -> dict[str, Path | None]:
    """Absolute paths the package installs (from portguard.install and portguard.links) mapped to
    the source file, None for links. The venv (/opt/portguard) is dh-virtualenv's: not here."""
    paths: dict[str, Path | None] = {}
    for line in (DEBIAN / "portguard.install").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, destination = line.split()
        sources = sorted(ROOT.glob(pattern))
        assert sources, f"portguard.install: {pattern} matches nothing"
        for source in sources:
            for file in sorted(source.rglob("*")) if source.is_dir() else [source]:
                if file.is_file():
                    relative = file.relative_to(source.parent)
                    paths[f"/{destination.strip('/')}/{relative}"] = file
    for line in (DEBIAN / "portguard.links").read_text(encoding="utf-8").splitlines():
        if line.strip():
            paths["/" + line.split()[1]] = None
    return paths


def documented_paths() -> set[str]:
    """/usr/share/doc/portguard/<name> for every file that portguard.docs names."""
    names: set[str] = set()
    for line in (DEBIAN / "portguard.docs").read_text(encoding="utf-8").splitlines():
        names.update(path.name for path in ROOT.glob(line.strip()) if path.is_file())
    return {f"/usr/share/doc/portguard/{name}" for name in names}


def unit_values(key: str) -> list[str]:
    return [
        line.split("=", 1)[1].strip()
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"{key}=")
    ]


def rules_text() -> str:
    return (DEBIAN / "rules").read_text(encoding="utf-8")


# --- debian/control ---------------------------------------------------------------------------


def test_control_names_the_source_and_binary_package() -> None:
    source, binary = deb822(DEBIAN / "control")
    assert source["Source"] == binary["Package"] == "portguard"
    assert binary["Architecture"] == "any"  # netfilterqueue is compiled code
    assert re.fullmatch(r".+ <[^@\s]+@[^@\s]+>", source["Maintainer"])
    assert source["Rules-Requires-Root"] == "no"
    assert binary["Description"].splitlines()[0]


def test_control_depends_on_what_the_daemon_runs() -> None:
    depends = relations(package()["Depends"])
    for needed in (
        "python3 (>= 3.11)",
        "libnetfilter-queue1",
        "iptables | nftables",
        "iproute2",
        "conntrack",
        "ipset",  # the iptables backend's deny cache
        "adduser | systemd",
        "${shlibs:Depends}",
        "${misc:Depends}",
        "${portguard:Python}",
    ):
        assert needed in depends, f"Depends lacks {needed}"


def test_control_build_depends_on_the_build_tools() -> None:
    build = relations(deb822(DEBIAN / "control")[0]["Build-Depends"])
    for needed in ("debhelper-compat (= 13)", "dh-virtualenv (>= 1.2)", "libnetfilter-queue-dev"):
        assert needed in build
    assert {"python3-venv", "python3-dev"} <= set(build)


def test_rules_set_the_upper_python_bound_that_control_uses() -> None:
    # the venv links to one Python minor version: the package must not outlive it
    assert "-Vportguard:Python=python3 (<< $(PYTHON_NEXT))" in rules_text()


def test_rules_build_the_venv_in_opt_portguard_with_the_system_python() -> None:
    text = rules_text()
    assert re.search(r"^export DH_VIRTUALENV_INSTALL_ROOT = /opt$", text, re.M)
    assert "--install-suffix portguard" in text
    assert "--builtin-venv --python $(PYTHON)" in text
    assert re.search(r"^PYTHON := /usr/bin/python3$", text, re.M)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert scripts["project"]["scripts"]["portguard"] == "portguard.cli.main:main"


def test_rules_never_start_the_unit_on_install() -> None:
    assert "dh_installsystemd --no-start --restart-after-upgrade" in rules_text()


def test_source_format_is_native() -> None:
    assert (DEBIAN / "source" / "format").read_text(encoding="utf-8").strip() == "3.0 (native)"


# --- the unit's references --------------------------------------------------------------------


def test_every_program_the_unit_runs_is_installed_or_depended_on() -> None:
    paths = installed_paths()
    depends = relations(package()["Depends"])
    commands = [
        value.lstrip("-@:+!")
        for key in ("ExecStartPre", "ExecStart", "ExecReload", "ExecStop", "ExecStartPost")
        for value in unit_values(key)
    ]
    assert commands, "the unit runs nothing"
    for command in commands:
        program = command.split()[0]
        if program in PROVIDED_BY:
            needed = PROVIDED_BY[program]
            assert needed in depends, f"the unit runs {program}: Depends lacks {needed}"
        else:
            assert program in paths, f"the unit runs {program}, which the package does not install"


def test_every_config_path_the_unit_names_is_installed() -> None:
    paths = installed_paths()
    named = set(re.findall(r"(/etc/portguard/\S+)", UNIT.read_text(encoding="utf-8")))
    assert named
    assert named <= set(paths), named - set(paths)


def test_the_unit_documentation_is_installed() -> None:
    documents = documented_paths()
    for value in unit_values("Documentation"):
        for url in value.split():
            assert url.startswith("file://"), url
            assert url.removeprefix("file://") in documents, f"{url} is not installed"
    assert "dh_compress -X.md" in rules_text()  # else they would become *.md.gz


def test_the_unit_user_and_group_are_created_by_sysusers() -> None:
    user, group = unit_values("User"), unit_values("Group")
    entries = [
        line.split()
        for line in (PACKAGING / "sysusers.d" / "portguard.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [entry[:3] for entry in entries] == [["u", "portguard", "-"]]  # with its own group
    assert user == group == ["portguard"]


def test_tmpfiles_log_directory_matches_the_unit() -> None:
    entries = [
        line.split()
        for line in (PACKAGING / "tmpfiles.d" / "portguard.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert unit_values("LogsDirectory") == ["portguard"]
    assert ["d", "/var/log/portguard", "0750", "portguard", "portguard", "-"] in entries


def test_sysctl_file_turns_on_what_flow_end_events_need() -> None:
    settings = dict(
        (part.strip() for part in line.split("=", 1))
        for line in (PACKAGING / "sysctl.d" / "50-portguard.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert settings == dict.fromkeys(ACCOUNTING, "1")
    modules = (PACKAGING / "modules-load.d" / "portguard.conf").read_text().splitlines()
    assert "nf_conntrack" in modules  # the keys exist only once conntrack is loaded


def test_package_installs_the_system_files() -> None:
    paths = installed_paths()
    for relative in (
        "sysusers.d/portguard.conf",
        "tmpfiles.d/portguard.conf",
        "sysctl.d/50-portguard.conf",
        "modules-load.d/portguard.conf",
    ):
        assert paths[f"/usr/lib/{relative}"] == PACKAGING / relative
    assert paths["/lib/systemd/system/portguard.service"] == UNIT
    assert paths["/usr/bin/portguard"] is None  # a link to the venv's script


# --- conffiles and the shipped config ---------------------------------------------------------


def test_conffiles_are_the_shipped_config_rules_and_logrotate() -> None:
    # debhelper marks every file under /etc as a conffile
    conffiles = {path for path in installed_paths() if path.startswith("/etc/")}
    assert conffiles == EXPECTED_CONFFILES
    shipped_rules = {
        f"/etc/portguard/rules.d/{path.relative_to(SHIPPED / 'rules')}"
        for path in (SHIPPED / "rules").rglob("*")
        if path.is_file()
    }
    assert shipped_rules <= conffiles


def test_the_shipped_config_reads_the_installed_rules_directory() -> None:
    config = tomllib.loads((SHIPPED / "portguard.toml").read_text(encoding="utf-8"))
    rules_dirs = {path.rsplit("/", 1)[0] for path in EXPECTED_CONFFILES if "/rules.d/" in path}
    assert config["rules"]["paths"] == ["/etc/portguard/rules.d"]
    assert "/etc/portguard/rules.d" in rules_dirs


# --- maintainer scripts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        DEBIAN / "portguard.postinst",
        DEBIAN / "portguard.prerm",
        DEBIAN / "portguard.postrm",
        PACKAGING / "system-setup.sh",
    ],
    ids=lambda path: path.name,
)
def test_maintainer_scripts_parse_under_sh(script: Path) -> None:
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if script.parent == DEBIAN:
        assert "#DEBHELPER#" in script.read_text(encoding="utf-8")


def test_no_script_starts_the_daemon() -> None:
    # try-restart (only a daemon that already runs) is allowed; start, restart, enable --now not
    starts = re.compile(
        r"(systemctl|deb-systemd-invoke|invoke-rc\.d)\s+(\S+\s+)*(start|restart)\b|enable\s+--now"
    )
    for script in [*DEBIAN.glob("portguard.*"), PACKAGING / "system-setup.sh"]:
        for number, line in enumerate(script.read_text(encoding="utf-8").splitlines(), 1):
            if not line.lstrip().startswith(("#", "echo")):
                assert not starts.search(line), f"{script.name}:{number}: {line.strip()}"


def test_postrm_purge_removes_the_config_and_keeps_the_user() -> None:
    text = (DEBIAN / "portguard.postrm").read_text(encoding="utf-8")
    purge = re.search(r"(?ms)^purge\)\n(.*?);;", text)
    assert purge is not None
    assert "rm -rf /etc/portguard" in purge[1]
    assert not re.search(r"^\s*(deluser|userdel)\b", text, re.M)


# --- the top Makefile keeps its default goal --------------------------------------------------


def test_including_packaging_mk_keeps_help_as_the_default_goal() -> None:
    result = subprocess.run(
        ["make", "-n", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "sudo make demo" in result.stdout.splitlines()[0]


# --- install_config.py: what `make install` does to /etc/portguard ----------------------------


def install_config(state: Path, *pairs: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(INSTALL_CONFIG), "--state", str(state), *map(str, pairs)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    source = tmp_path / "shipped"
    (source / "rules" / "lists").mkdir(parents=True)
    (source / "portguard.toml").write_text("[queue]\nnum = 0\n")
    (source / "rules" / "10-isp.toml").write_text("[default]\naction = 'allow'\n")
    (source / "rules" / "lists" / "business.txt").write_text("203.0.113.0/24\n")
    return source


def test_install_config_installs_missing_files(shipped: Path, tmp_path: Path) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state.json"
    lines = install_config(state, shipped / "rules", etc / "rules.d")
    assert lines == [
        f"installed {etc}/rules.d/10-isp.toml",
        f"installed {etc}/rules.d/lists/business.txt",
    ]
    assert (etc / "rules.d" / "lists" / "business.txt").read_text() == "203.0.113.0/24\n"
    assert (etc / "rules.d" / "10-isp.toml").stat().st_mode & 0o777 == 0o644
    assert install_config(state, shipped / "rules", etc / "rules.d") == []  # nothing to do


def test_install_config_keeps_an_edit_and_writes_dist(shipped: Path, tmp_path: Path) -> None:
    target, state = tmp_path / "etc" / "portguard.toml", tmp_path / "state.json"
    install_config(state, shipped / "portguard.toml", target)
    target.write_text("[queue]\nnum = 7\n")
    (shipped / "portguard.toml").write_text("[queue]\nnum = 0\nworkers = 2\n")
    assert install_config(state, shipped / "portguard.toml", target) == [
        f"kept your edited {target}; the shipped version is {target}.dist"
    ]
    dist = tmp_path / "etc" / "portguard.toml.dist"
    assert target.read_text() == "[queue]\nnum = 7\n"
    assert dist.read_text() == "[queue]\nnum = 0\nworkers = 2\n"
    install_config(state, shipped / "portguard.toml", target)  # again: still kept
    assert target.read_text() == "[queue]\nnum = 7\n"


def test_install_config_updates_an_unedited_file(shipped: Path, tmp_path: Path) -> None:
    target, state = tmp_path / "etc" / "portguard.toml", tmp_path / "state.json"
    install_config(state, shipped / "portguard.toml", target)
    (shipped / "portguard.toml").write_text("[queue]\nnum = 1\n")
    assert install_config(state, shipped / "portguard.toml", target) == [f"updated {target}"]
    assert target.read_text() == "[queue]\nnum = 1\n"


def test_install_config_without_a_record_treats_a_difference_as_an_edit(
    shipped: Path, tmp_path: Path
) -> None:
    target, state = tmp_path / "etc" / "portguard.toml", tmp_path / "state.json"
    target.parent.mkdir()
    target.write_text("# the operator's own\n")
    install_config(state, shipped / "portguard.toml", target)
    assert target.read_text() == "# the operator's own\n"
    assert (tmp_path / "etc" / "portguard.toml.dist").exists()


def test_install_config_removes_a_stale_dist(shipped: Path, tmp_path: Path) -> None:
    target, state = tmp_path / "etc" / "portguard.toml", tmp_path / "state.json"
    install_config(state, shipped / "portguard.toml", target)
    target.write_text("# edited\n")
    install_config(state, shipped / "portguard.toml", target)
    dist = tmp_path / "etc" / "portguard.toml.dist"
    assert dist.exists()
    target.write_text((shipped / "portguard.toml").read_text())  # the operator merged
    assert install_config(state, shipped / "portguard.toml", target) == []
    assert not dist.exists()


def install_config_calls() -> list[list[str]]:
    """The install_config.py command lines of `make install`, as make expands them."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "install", "DESTDIR=/stage"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    calls: list[list[str]] = []
    lines = iter(result.stdout.splitlines())
    for line in lines:
        command = line
        while command.endswith("\\"):
            command = command.removesuffix("\\") + next(lines)
        if "install_config.py" in command and not command.startswith("#"):
            calls.append(command.split()[2:])  # after the python and the script
    assert calls, result.stdout
    return calls


def test_make_install_manages_the_same_files_the_package_ships_as_conffiles() -> None:
    targets: dict[str, str] = {}  # target -> the suffix of the shipped copy beside an edit
    for arguments in install_config_calls():
        suffix, items = ".dist", iter(arguments)
        words: list[str] = []
        for word in items:
            if word == "--dist-suffix":
                suffix = next(items)
            elif word == "--state":
                next(items)
            else:
                words.append(word)
        for source, target in zip(words[::2], words[1::2], strict=True):
            shipped = ROOT / source
            files = [shipped] if shipped.is_file() else sorted(shipped.rglob("*"))
            for file in files:
                if file.is_file():
                    inside = "" if file == shipped else f"/{file.relative_to(shipped)}"
                    targets[target.removeprefix("/stage") + inside] = suffix
    assert set(targets) == EXPECTED_CONFFILES
    # logrotate reads every file in logrotate.d but a few suffixes (a *.dist copy of the config
    # would be a duplicate entry): the shipped copy beside an edited one must be one of those
    assert targets["/etc/logrotate.d/portguard"] == ".dpkg-dist"
    assert {targets[path] for path in targets if path.startswith("/etc/portguard/")} == {".dist"}


def test_install_config_dist_suffix(shipped: Path, tmp_path: Path) -> None:
    target, state = tmp_path / "logrotate.d" / "portguard", tmp_path / "state.json"
    install_config(state, shipped / "portguard.toml", target)
    target.write_text("# edited\n")
    lines = install_config(
        state, Path("--dist-suffix"), Path(".dpkg-dist"), shipped / "portguard.toml", target
    )
    assert lines == [f"kept your edited {target}; the shipped version is {target}.dpkg-dist"]
    assert sorted(path.name for path in target.parent.iterdir()) == [
        "portguard",
        "portguard.dpkg-dist",
    ]
