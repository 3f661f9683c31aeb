# relay: two commands on a fresh machine. `make run` and `make test` bootstrap .venv,
# compile relay/_fast, then start the relay or run every test.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= config/relay.toml

.PHONY: all run test compile debug fuzz bench bench-quick clean tools

all: compile

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel "Cython>=3.0,<3.4"

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

# Rebuilds the extension whenever a .pyx/.pxd is newer than what was compiled.
compile: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

debug: $(STAMP)
	RELAY_DEBUG_BUILD=1 $(PY) setup.py -q build_ext --inplace --force

run: compile
	$(VENV)/bin/relay serve -c $(CONFIG)

# Debian tools the tests drive (installed when root, else a clear message).
tools:
	@sh tests/support/require-tools.sh swaks curl mbsync:isync mutt fetchmail dnsmasq:dnsmasq-base unshare:util-linux nsenter:util-linux

test: compile tools
	$(PY) -m pytest -q tests

fuzz: compile
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/fast

bench: compile
	$(PY) -m bench.run

bench-quick: compile
	$(PY) -m bench.run --quick

clean:
	rm -rf build relay/_fast/*.c relay/_fast/*.so relay/_fast/*.html
