"""The edges: the kernel queue, the hooks, conntrack and netlink, systemd, signals, and the
operator's files and DNS. Thin, and importing only the core."""
