"""The edges: kernel queue, hook backends, netlink and the other parts that touch the system."""
