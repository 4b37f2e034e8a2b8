"""Which hook backend to use ("auto" probes the kernel), and the clean-up of a crashed run's
leftovers of any backend."""

from __future__ import annotations

from portguard.io.hooks.backend import BACKENDS, DenyCacheSets, HookBackend, HookError
from portguard.io.hooks.ipsets import IpsetCache
from portguard.io.hooks.iptables import IptablesBackend
from portguard.io.hooks.nftables import NftablesBackend, queue_supported
from portguard.io.hooks.runner import Runner, run_command


def select_backend(name: str, runner: Runner = run_command) -> HookBackend:
    """The backend called ``name``; "auto" is nftables where the kernel has an nft queue."""
    if name == "nftables":
        return NftablesBackend(runner)
    if name == "iptables":
        return IptablesBackend(runner)
    if name == "auto":
        return NftablesBackend(runner) if queue_supported(runner) else IptablesBackend(runner)
    raise ValueError(f"hook backend must be one of {BACKENDS}, not {name!r}")


def deny_cache_sets(backend: str, runner: Runner = run_command) -> DenyCacheSets:
    """The deny cache of the backend called ``backend`` (as selected: not "auto")."""
    from portguard.io.hooks.nftcache import NftCache

    return NftCache(runner) if backend == "nftables" else IpsetCache(runner)


def cleanup_leftovers(runner: Runner = run_command) -> tuple[str, ...]:
    """Remove what any backend left (a crashed run); the names of backends that had something.

    A backend whose tool cannot even list its rules (absent, or a kernel without that subsystem)
    cannot have left anything and is skipped; a failing removal raises HookError.
    """
    cleaned: list[str] = []
    for backend in (NftablesBackend(runner), IptablesBackend(runner)):
        try:
            installed = backend.status().installed
        except HookError:
            continue
        if installed:
            backend.remove()
            cleaned.append(backend.name)
    return tuple(cleaned)
