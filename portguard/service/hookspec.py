"""What the config asks the kernel hook for: the ``HookSpec`` of ``[queue]`` and ``[hook]``
(used by the daemon and by `portguard hook`)."""

from __future__ import annotations

from portguard.config.model import Config
from portguard.io.hooks.backend import HookSpec, SourceLimit


def hook_spec(config: Config) -> HookSpec:
    return HookSpec(
        queue_num=config.queue.num,
        workers=config.queue.workers,
        ports=tuple(config.hook.ports),
        chains=tuple(config.hook.chains),
        fail_open=config.queue.fail_mode == "open",
        per_source=per_source_limit(config),
        deny_cache=config.queue.deny_cache > 0,
    )


def per_source_limit(config: Config) -> SourceLimit | None:
    limit = config.queue.per_source
    return SourceLimit(limit.rate, limit.burst, limit.prefix6) if limit.enabled else None
