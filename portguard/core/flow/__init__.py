"""Flow tracking: one Flow per decided SYN in a bounded table, expired by `now` (pure)."""

from portguard.core.flow.table import Flow, FlowKey, FlowTable, TcpState, Timeouts

__all__ = ["Flow", "FlowKey", "FlowTable", "TcpState", "Timeouts"]
