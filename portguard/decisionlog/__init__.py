"""Decision log: ECS event records (pure) and the sinks that write them (edge)."""
