"""Files shipped with portguard: the default daemon config, the ISP practice rules, presets."""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent
CONFIG_PATH = SHIPPED_DIR / "portguard.toml"
RULES_DIR = SHIPPED_DIR / "rules"
PRESETS_DIR = (
    SHIPPED_DIR / "presets"
)  # <name>/rules/ (rule and list files), cases.toml, portguard.toml


def default_config_text() -> str:
    """The shipped, commented ``portguard.toml`` (all defaults)."""
    return CONFIG_PATH.read_text(encoding="utf-8")


def preset_names() -> list[str]:
    """The shipped presets (docs/presets.md), by name."""
    return sorted(path.name for path in PRESETS_DIR.iterdir() if path.is_dir())
