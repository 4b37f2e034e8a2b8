"""The daemon config (portguard.toml): its shape and defaults (schema.py), the checks that
need more than one key (checks.py), and the loaded, frozen ``Config`` (model.py)."""
