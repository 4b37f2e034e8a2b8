# Install and package portguard (included by the top Makefile; run make from the repository root):
#   sudo make install     a venv in /opt/portguard, /usr/bin/portguard, /etc/portguard (an edited
#                         file is kept, the shipped one lands next to it as *.dist), the unit
#   sudo make uninstall   removes all that but /etc/portguard (PURGE=1 removes it too)
#   make deb              dist/portguard_<version>_<arch>.deb (dpkg-buildpackage, dh-virtualenv)
# Staged installs: make install DESTDIR=/tmp/stage (nothing outside DESTDIR is touched then).

# included before the top Makefile's first target: leave its default goal (help) alone
PG_DEFAULT_GOAL := $(.DEFAULT_GOAL)

PG_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' portguard/__init__.py)
SYSTEM_PYTHON ?= /usr/bin/python3

DESTDIR ?=
PREFIX ?= /usr
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
OPTDIR ?= /opt/portguard
UNITDIR ?= /lib/systemd/system
SYSTEMD_LIBDIR ?= $(PREFIX)/lib
DOCDIR ?= $(PREFIX)/share/doc/portguard
PURGE ?=

PG_CONFDIR := $(SYSCONFDIR)/portguard
PG_VENV := $(DESTDIR)$(OPTDIR)
PG_CONFIG_STATE := $(PG_VENV)/share/portguard/installed-config.json
PG_SYSTEM_FILES := sysusers.d/portguard.conf tmpfiles.d/portguard.conf \
	sysctl.d/50-portguard.conf modules-load.d/portguard.conf

# to build netfilterqueue (no wheel) and to run: the install needs these Debian packages
INSTALL_APT_PACKAGES := python3-venv python3-dev gcc libc6-dev libnetfilter-queue-dev \
	libnetfilter-queue1 iptables iproute2 conntrack procps
DEB_APT_PACKAGES := $(INSTALL_APT_PACKAGES) build-essential dpkg-dev fakeroot debhelper dh-virtualenv

DEB_VERSION ?= $(PG_VERSION)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_OUT ?= dist
DEB_BUILD_DIR ?= build/deb
DEB_SOURCE = $(DEB_BUILD_DIR)/portguard-$(DEB_VERSION)
DEB_FILE = $(DEB_OUT)/portguard_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_MAINTAINER := $(shell sed -n 's/^Maintainer: //p' packaging/debian/control)
# what the package is built from (copied: the build never writes into this tree)
DEB_TREE := pyproject.toml hatch_build.py README.md CHANGELOG.md portguard systemd contrib docs packaging

.PHONY: install install-deps uninstall deb deb-deps

install-deps:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then \
	  echo "make install writes to $(OPTDIR), $(PG_CONFDIR) and $(PREFIX): sudo make install"; exit 1; fi
	@if [ -z "$(DESTDIR)" ] && dpkg-query -W -f='$${Status}' portguard 2>/dev/null | grep -q "ok installed"; then \
	  echo "portguard is installed as a Debian package: upgrade it with apt, not make install"; exit 1; fi
	@if [ -z "$(DESTDIR)" ]; then \
	  $(MAKE) --no-print-directory system-deps APT_PACKAGES="$(INSTALL_APT_PACKAGES)"; fi

install: install-deps
	@# the venv: (re)created when missing or broken (e.g. after a Python upgrade)
	@$(PG_VENV)/bin/python -c '' 2>/dev/null || { rm -rf $(PG_VENV) && $(SYSTEM_PYTHON) -m venv $(PG_VENV); }
	@# pip reinstalls a project from a directory every time; its dependencies only when needed
	$(PG_VENV)/bin/python -m pip install -q --disable-pip-version-check .
	@# a staged venv's scripts name their final place, not DESTDIR
	@if [ -n "$(DESTDIR)" ]; then \
	  grep -rlI -- "$(PG_VENV)" $(PG_VENV)/bin $(PG_VENV)/pyvenv.cfg | xargs -r sed -i "s#$(PG_VENV)#$(OPTDIR)#g"; fi
	install -d $(DESTDIR)$(BINDIR)
	ln -sfn $(OPTDIR)/bin/portguard $(DESTDIR)$(BINDIR)/portguard
	$(SYSTEM_PYTHON) packaging/install_config.py --state $(PG_CONFIG_STATE) \
	  portguard/shipped/portguard.toml $(DESTDIR)$(PG_CONFDIR)/portguard.toml \
	  portguard/shipped/rules $(DESTDIR)$(PG_CONFDIR)/rules.d
	@# logrotate reads every file in logrotate.d but *.dpkg-dist (and a few more): not *.dist
	$(SYSTEM_PYTHON) packaging/install_config.py --state $(PG_CONFIG_STATE) --dist-suffix .dpkg-dist \
	  contrib/logrotate/portguard $(DESTDIR)$(SYSCONFDIR)/logrotate.d/portguard
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's#/usr/bin/portguard#$(BINDIR)/portguard#g' \
	  -e 's#/usr/share/doc/portguard#$(DOCDIR)#g' systemd/portguard.service \
	  > $(DESTDIR)$(UNITDIR)/portguard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/portguard.service
	@for file in $(PG_SYSTEM_FILES); do \
	  install -D -m 0644 packaging/$$file $(DESTDIR)$(SYSTEMD_LIBDIR)/$$file || exit 1; done
	install -d $(DESTDIR)$(DOCDIR)
	install -m 0644 README.md CHANGELOG.md docs/*.md $(DESTDIR)$(DOCDIR)/
	@if [ -z "$(DESTDIR)" ]; then \
	  sh packaging/system-setup.sh install $(SYSTEMD_LIBDIR)/sysusers.d/portguard.conf \
	    $(SYSTEMD_LIBDIR)/tmpfiles.d/portguard.conf $(SYSTEMD_LIBDIR)/sysctl.d/50-portguard.conf; \
	fi
	@echo "installed portguard $(PG_VERSION) in $(DESTDIR)$(OPTDIR)"

uninstall:
	@if [ -z "$(DESTDIR)" ] && dpkg-query -W -f='$${Status}' portguard 2>/dev/null | grep -q "ok installed"; then \
	  echo "portguard is installed as a Debian package: remove it with apt"; exit 1; fi
	@if [ -z "$(DESTDIR)" ]; then sh packaging/system-setup.sh uninstall; fi
	rm -rf $(PG_VENV) $(DESTDIR)$(DOCDIR)
	@if [ "$$(readlink $(DESTDIR)$(BINDIR)/portguard)" = "$(OPTDIR)/bin/portguard" ]; then \
	  rm -f $(DESTDIR)$(BINDIR)/portguard; fi
	rm -f $(DESTDIR)$(UNITDIR)/portguard.service $(addprefix $(DESTDIR)$(SYSTEMD_LIBDIR)/,$(PG_SYSTEM_FILES))
	@if [ -n "$(PURGE)" ]; then \
	  rm -rf $(DESTDIR)$(PG_CONFDIR) $(DESTDIR)$(SYSCONFDIR)/logrotate.d/portguard \
	    $(DESTDIR)$(SYSCONFDIR)/logrotate.d/portguard.dpkg-dist \
	    $(DESTDIR)/var/log/portguard $(DESTDIR)/var/lib/portguard; \
	else echo "kept $(DESTDIR)$(PG_CONFDIR), $(DESTDIR)$(SYSCONFDIR)/logrotate.d/portguard the logs and the state (PURGE=1 removes them)"; fi
	@if [ -z "$(DESTDIR)" ]; then sh packaging/system-setup.sh reload; \
	  echo "the portguard user stays (userdel portguard removes it)"; fi

deb-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(DEB_APT_PACKAGES)"

deb: deb-deps
	rm -rf $(DEB_SOURCE) && mkdir -p $(DEB_SOURCE) $(DEB_OUT)
	tar -cf - --exclude=__pycache__ --exclude='*.pyc' --exclude='*.so' $(DEB_TREE) | tar -xf - -C $(DEB_SOURCE)
	cp -r packaging/debian $(DEB_SOURCE)/debian && chmod +x $(DEB_SOURCE)/debian/rules
	@# the package's version is the program's: a bumped DEB_VERSION (e.g. 0.1.0+test2, a valid
	@# Python version too) is stamped into the copy's portguard/__init__.py
	sed -i 's/^__version__ = .*/__version__ = "$(DEB_VERSION)"/' $(DEB_SOURCE)/portguard/__init__.py
	@# (a native package: dh_installchangelogs installs CHANGELOG.md as the changelog instead)
	printf 'portguard (%s) unstable; urgency=medium\n\n  * Built from the portguard source tree by make deb.\n\n -- %s  %s\n' \
	  '$(DEB_VERSION)' '$(DEB_MAINTAINER)' "$$(date -R)" > $(DEB_SOURCE)/debian/changelog
	cd $(DEB_SOURCE) && env -u VIRTUAL_ENV -u PYTHONPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	  dpkg-buildpackage -b -us -uc
	mv $(DEB_BUILD_DIR)/portguard_$(DEB_VERSION)_$(DEB_ARCH).deb $(DEB_FILE)
	@echo "built $(DEB_FILE)"

.DEFAULT_GOAL := $(PG_DEFAULT_GOAL)
