"""The command line: argument parsing (main.py) and the one-shot commands check, explain,
hook, reload and status (commands.py). `portguard run` hands over to service/daemon.py."""
