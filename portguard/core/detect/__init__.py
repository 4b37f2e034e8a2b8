"""Fan-out detection (a source trying many destinations on a port) and the quarantine table."""
