"""The kernel hook: its contract (backend.py), the command runner (runner.py), the iptables and
nftables backends, the factory that picks one (factory.py) and the watch that repairs it."""
