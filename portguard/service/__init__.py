"""The running service: the daemon and its supervisor, the workers and their loop, the one
reload path, the control socket, status and metrics, and the state kept across restarts."""
