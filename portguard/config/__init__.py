"""The daemon config (portguard.toml), modelled once: the frozen ``Config`` of pydantic models
and ``load_config`` (model.py), the kinds and limits of single values (schema.py), and the checks
that need more than one key (checks.py)."""
