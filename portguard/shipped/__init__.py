"""Files shipped with portguard: the default daemon config and the ISP practice rules."""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent
CONFIG_PATH = SHIPPED_DIR / "portguard.toml"
RULES_DIR = SHIPPED_DIR / "rules"


def default_config_text() -> str:
    """The shipped, commented ``portguard.toml`` (all defaults)."""
    return CONFIG_PATH.read_text(encoding="utf-8")
