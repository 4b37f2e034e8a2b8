"""TCP flow tracking: one Flow per connection in a bounded table, expired by `now` (pure)."""

from portguard.flow.table import Flow, FlowKey, FlowTable, Observation, TcpState, Timeouts

__all__ = ["Flow", "FlowKey", "FlowTable", "Observation", "TcpState", "Timeouts"]
