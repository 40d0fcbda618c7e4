# HomeChannel: two commands on a fresh machine.
#   make run    start a coordinator and a home server on this machine (demo)
#   make test   install everything, then run the whole test suite in a
#               loopback-only network namespace
# Stamp files keep repeated runs fast.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first Python >= 3.11 on PATH (override: make PYTHON=/path/to/python3.12 ...).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	if command -v $$p >/dev/null 2>&1 && \
	   $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	   command -v $$p; break; fi; done)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q

# Debian packages the end-to-end tests need.
SYSDEPS := chromium openssh-server tigervnc-standalone-server xvfb x11vnc x11-xserver-utils xclip iproute2 systemd nftables coturn nginx redis-server redis-tools haproxy
# pytest-xdist workers for 'make test' and 'make test-fast', each in network,
# mount and PID namespaces of its own (tests/netns-python).  The suite waits on
# processes, browsers and networks more than it computes: 3 workers keep both
# cores of a 2-core machine busy (docs/performance.md, "The test suite").
TEST_WORKERS ?= 3
FAST_WORKERS ?= 3
# A hung test fails alone, by name, after 300 s (pytest-timeout: timeout in
# setup.cfg).  SUITE_TIMEOUT is only a last resort against a hung run: far above
# the suite's real duration (about 3 minutes here, 8 at most on a slow machine).
SUITE_TIMEOUT ?= 3600

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv npm sysdeps run wheel test test-fast soak typecheck bench clean

help:
	@echo "make run     start a demo coordinator + home server on 127.0.0.1 (V=1: show their logs too)"
	@echo "make test    install everything and run the tests in a loopback-only netns"
	@echo "make test-fast  unit and protocol tests only (pytest -m 'not e2e'), the type check included"
	@echo "make typecheck  mypy on the package, the pure layer strictly (setup.cfg [mypy])"
	@echo "make soak    full-size soak tests (a 2 GiB download in Chromium), not in make test"
	@echo "make bench   run every bench/*.py (python -m bench.NAME)"
	@echo "make wheel   build dist/homechannel-VERSION-py3-none-any.whl (and the sdist) to deploy"
	@echo "make venv | npm | sysdeps | clean"

# -- Python ---------------------------------------------------------------

venv: $(VENV)/.stamp

# editable_mode=compat puts the checkout itself on sys.path, which is what
# lets twistd find twisted/plugins/homechannel_plugins.py (a plain editable
# install of a flat layout hides it from twistd's plugin scan).
$(VENV)/.stamp: setup.cfg setup.py pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: Python >= 3.11 not found (Debian: apt-get install python3 python3-venv)" >&2; exit 1; fi
	@if [ ! -x $(PY) ]; then \
		rm -rf $(VENV); \
		if ! $(PYTHON) -m venv $(VENV); then \
			rm -rf $(VENV); \
			if [ "$$(id -u)" = 0 ] || [ -n "$$CI" ]; then \
				SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
				$$SUDO apt-get update -q && \
				DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q python3-venv && \
				$(PYTHON) -m venv $(VENV) || exit 1; \
			else \
				echo "error: '$(PYTHON) -m venv' failed: install python3-venv (apt-get install python3-venv)" >&2; \
				exit 1; \
			fi; \
		fi; \
	fi
	$(PIP) install --progress-bar off -U pip 'setuptools>=64' wheel
	$(PIP) install --progress-bar off -e '.[test,cluster]' --config-settings editable_mode=compat
	@touch $@

# -- JavaScript (noVNC, xterm.js) ----------------------------------------

npm: static/node_modules/.stamp

static/node_modules/.stamp: static/package.json $(wildcard static/package-lock.json)
	@command -v npm >/dev/null 2>&1 || { \
		echo "error: npm not found (Debian: apt-get install npm; 'make sysdeps' does it as root)" >&2; exit 1; }
	cd static && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
		else npm install --no-audit --no-fund --no-package-lock; fi
	@touch $@

# -- the wheel to deploy ---------------------------------------------------

# python -m build: the sdist, then the wheel from the sdist, with the venv's
# setuptools (no download).  setup.py runs 'npm ci' in static/ by itself when
# static/node_modules lacks the client's runtime packages (npm needed then).
wheel: venv
	rm -f dist/homechannel-*
	$(PY) -m build --no-isolation --outdir dist .
	@echo "the wheel: $$(ls dist/homechannel-*.whl)"

# -- Debian packages ------------------------------------------------------

# As root or in CI: install what is missing (skipped quickly when all are
# present).  Otherwise: say what is missing and carry on (those tests skip).
sysdeps:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
		echo "warning: not a Debian system; install by hand: $(SYSDEPS) npm" >&2; exit 0; fi; \
	missing=; \
	for p in $(SYSDEPS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	[ -n "$$missing" ] || exit 0; \
	if [ "$$(id -u)" = 0 ] || [ -n "$$CI" ]; then \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		echo "installing:$$missing"; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	else \
		echo "warning: missing Debian packages:$$missing" >&2; \
		echo "warning: install them with: sudo apt-get install$$missing (tests needing them will skip)" >&2; \
	fi

# -- the two commands ------------------------------------------------------

# V=1 streams the daemons' logs to the terminal too (always in .run/*.log).
run: venv npm
	@$(PY) -m homechannel.demo $(if $(filter-out 0,$(V)),--verbose)

# pytest's own exit status (including 5, "no tests collected") fails make.
# --durations=15: the slowest tests, printed at the end of every run.
xdist = --tx $(1)*popen//python=tests/netns-python --dist worksteal
test: sysdeps venv npm
	timeout --kill-after=60 $(SUITE_TIMEOUT) \
		tests/netns-run $(PY) -m pytest $(call xdist,$(TEST_WORKERS)) --durations=15 \
		$(PYTEST_ARGS)

# The fast lane (under 30 s): tests/unit/, unit, protocol and web tests and the
# type check; nothing that starts twistd, Chromium, sshd, VNC or Redis, adds
# users, builds wheels or namespaces other than loopback (tests/conftest.py
# marks every test under tests/e2e/, and only those, e2e).
test-fast: venv
	tests/netns-run $(PY) -m pytest -m "not e2e" $(call xdist,$(FAST_WORKERS)) \
		$(PYTEST_ARGS)

# The soak lane: full-size runs kept out of make test (a 2 GiB download through
# Chromium, ...): pytest -m soak, one at a time.
soak: sysdeps venv npm
	tests/netns-run $(PY) -m pytest -m soak --timeout=3600 --durations=0 -s $(PYTEST_ARGS)

# mypy (with the zope plugin) on the package, the pure layer strictly (setup.cfg [mypy]);
# tests/unit/test_types.py runs the same in both lanes.
typecheck: venv
	$(PY) -m mypy

# Every bench/<name>.py, as "python -m bench.<name>", in a loopback-only netns.
bench: venv npm
	@set -e; for f in bench/[!_]*.py; do m=$$(basename $$f .py); \
		echo "== bench.$$m"; tests/netns-run $(PY) -m bench.$$m; done

# Leaves .run/ (the demo's keys and password) alone.
clean:
	rm -rf $(VENV) static/node_modules build dist *.egg-info .pytest_cache .hypothesis .mypy_cache
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
	rm -f twisted/plugins/dropin.cache
