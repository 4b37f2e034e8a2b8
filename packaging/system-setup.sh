#!/bin/sh
# The system side of `make install` / `make uninstall` (never run with a DESTDIR): the daemon
# user, tmpfiles, sysctl settings, and the systemd unit. Quiet where the machine has no running
# systemd (a container, a chroot): there the unit is only installed, not enabled.
#
# usage: system-setup.sh install SYSUSERS_FILE TMPFILES_FILE SYSCTL_FILE
#        system-setup.sh uninstall
set -eu

USER_NAME=portguard
UNIT=portguard.service

systemd_running() {
	[ -d /run/systemd/system ]
}

create_user() {  # sysusers.d file; useradd where systemd-sysusers is missing
	if command -v systemd-sysusers >/dev/null 2>&1; then
		systemd-sysusers "$1"
	elif ! getent passwd "$USER_NAME" >/dev/null; then
		useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin --comment "portguard SMTP-port policy daemon" "$USER_NAME"
	fi
}

create_directories() {  # tmpfiles.d file
	if command -v systemd-tmpfiles >/dev/null 2>&1; then
		systemd-tmpfiles --create "$1" >/dev/null 2>&1 || true
	else
		install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" /var/log/portguard
	fi
}

apply_sysctl() {  # only under systemd: without it the daemon runs as root and sets them itself
	if systemd_running; then
		modprobe nf_conntrack >/dev/null 2>&1 || true
		/lib/systemd/systemd-sysctl "$1" || echo "note: could not apply $1 now; it applies at boot"
	fi
}

case "${1:-}" in
install)
	create_user "$2"
	create_directories "$3"
	apply_sysctl "$4"
	if systemd_running; then
		systemctl daemon-reload
		systemctl enable "$UNIT"
		systemctl try-restart "$UNIT"  # a reinstall: the running daemon takes the new code
		echo "portguard is enabled: edit /etc/portguard, run 'portguard check', then 'systemctl start portguard'"
	else
		echo "systemd is not running here: $UNIT is installed but not enabled"
	fi
	;;
uninstall)
	if systemd_running; then
		systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
	fi
	;;
reload)
	if systemd_running; then
		systemctl daemon-reload
	fi
	;;
*)
	echo "usage: $0 install SYSUSERS TMPFILES SYSCTL | uninstall | reload" >&2
	exit 2
	;;
esac
