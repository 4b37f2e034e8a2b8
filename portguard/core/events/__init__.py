"""Event records: the decision, lifecycle and flow-end events as plain dicts, pure."""
