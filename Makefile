# portguard — `sudo make demo` and `sudo make test` work on a fresh Debian 12 / Ubuntu machine:
# they install the system packages and the Python venv they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := iptables nftables ipset iproute2 conntrack gcc make python3-dev python3-venv \
	libnetfilter-queue-dev openssl swaks procps kmod \
	rsyslog rsyslog-openssl rsyslog-elasticsearch logrotate python3-yaml tcpdump
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
include packaging/packaging.mk

.PHONY: help system-deps venv test unit integration test-kernel lint demo bench clean

help:
	@echo "sudo make demo   run the namespace lab demo (real daemon, real SMTP traffic)"
	@echo "sudo make test   install what is missing, then run unit and integration tests"
	@echo "sudo make test-kernel  tests/kernel on Debian's stock kernel in a VM: nftables, iptables-legacy, fail modes (docs/lab.md)"
	@echo "make lint        ruff and mypy"
	@echo "sudo make bench  every benchmark (tables on stdout and in bench/results/, plots in"
	@echo "                 docs/bench/): about 25 min on 2 cores; QUICK=1 about 7 min"
	@echo "sudo make install  venv in /opt/portguard, config in /etc/portguard, the unit enabled"
	@echo "make deb         a Debian package in dist/ (apt install ./dist/portguard_*.deb)"

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages: $$missing (run as root: sudo make ...)"; exit 1; fi; \
	  echo "installing system packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "portguard needs Python 3.11 or newer; $(PYTHON) is older."; \
	  echo "Use Debian 12, Ubuntu 24.04 or newer, or: make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | system-deps $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: system-deps $(VENV)/.installed

test: venv
	@if [ "$$(id -u)" != 0 ]; then echo "make test needs root for the namespace integration tests: sudo make test"; exit 1; fi
	$(PYTEST) tests

unit: venv
	$(PYTEST) tests/unit

integration: venv
	$(PYTEST) tests/integration

# Boots the distribution's stock kernel once (virtme-ng; KVM when usable, else TCG) and runs
# tests/kernel inside it; installs QEMU, virtme-ng and the kernel package into .cache/kernel-vm.
test-kernel: venv
	tests/kernel/vm.sh

lint: venv
	$(BIN)/ruff check portguard lab tests bench
	$(BIN)/ruff format --check portguard lab tests bench
	$(BIN)/mypy

demo: venv
	$(BIN)/python -m lab.demo

# Every benchmark of bench/, one after the other (none asserts a figure): tables on stdout and in
# bench/results/bench.txt, the decision benchmark's JSON in bench/results/decisions.json and its
# plots in docs/bench/. QUICK=1 runs each with its short options. See BENCHMARKS.md.
BENCH_LOG := bench/results/bench.txt
QUICK ?=
define run_bench
	@set -o pipefail; echo "== $(BIN)/python $(1)" | tee -a $(BENCH_LOG); \
	  $(BIN)/python $(1) 2>&1 | tee -a $(BENCH_LOG)
endef

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

bench: venv $(VENV)/.bench-installed
	@if [ "$$(id -u)" != 0 ]; then echo "make bench needs root for the namespace lab: sudo make bench"; exit 1; fi
	@mkdir -p bench/results && date -u "+benchmarks started %F %T UTC" > $(BENCH_LOG)
	$(call run_bench,bench/bench_decode.py $(if $(QUICK),--count 20000 --repeat 3))
	$(call run_bench,bench/bench_policy.py $(if $(QUICK),--quick))
	$(call run_bench,bench/bench_limits.py $(if $(QUICK),--quick))
	$(call run_bench,bench/bench_fastpath.py $(if $(QUICK),--mb 200 --rounds 3 --connects 90))
	$(call run_bench,bench/bench_reload.py $(if $(QUICK),--cidrs 100000 --connects 100))
	$(call run_bench,bench/bench_logging.py $(if $(QUICK),--quick))
	$(call run_bench,bench/bench_decisions.py $(if $(QUICK),--quick))
	@date -u "+benchmarks done %F %T UTC" | tee -a $(BENCH_LOG)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
