# Two commands do all set-up: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements.lock
LOCK_VENV := .lock-venv

.PHONY: install lock run test test-slow bench bench-quick bench-more histories clean chromium

# Every dependency at the version requirements.lock names (made by `make lock`), pip and setuptools included;
# then this project itself, editable, built with the locked setuptools. Only PyPI is needed.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep '^pip==' $(LOCK))"
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Resolve pyproject.toml's dependencies (with the dev extra) afresh in a throwaway venv and pin every one.
# After an SDK bump, run the replay corpus (tests/test_replay.py) before committing the new lock.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install --quiet '.[dev]'
	{ echo "# Every dependency of takeback (with the dev extra) at one version: make install installs exactly these."; \
	  echo "# Made by \`make lock\` from pyproject.toml; run tests/test_replay.py before committing a change of temporalio."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude takeback; } > $(LOCK)
	rm -rf $(LOCK_VENV) build

run: install
	$(BIN)/takeback dev --demo

test: install chromium
	$(BIN)/pytest -q -rs

# The console's browser tests drive Debian's Chromium (never a downloaded browser): installed here where it is
# missing and the machine allows (root, or sudo without a password); otherwise one line says what to install.
chromium:
	@[ -n "$$TAKEBACK_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	  if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make test: the console's browser tests need Chromium: install it (Debian: sudo apt-get install chromium) or set TAKEBACK_CHROMIUM to its path" >&2; exit 1; fi; \
	  echo "make test: installing Debian's chromium for the console's browser tests"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test-slow: install
	$(BIN)/pytest -q -rs -m slow

# Issue 15's measures, each on a stack of its own, one after another (bench/all.py; 14.5 minutes on 2 cores before
# issue 23's lifecycle mirrors and met3 path, which add ~2.5-3, estimated): the booking grid (API vs raw SDK starts at
# concurrency 1/8/32, SQLite and PostgreSQL), a deadline storm of 5,000 deals, lifecycle (deals on five paths beside
# raw mirrors of them) / round trips / reads / parked deals on both stores, 1 vs 2 workers, and what a deal costs.
# `make bench-quick`: every one at small sizes, SQLite only (about 2 minutes). `make bench-more`: the earlier
# issues' benchmarks (mail down, worker SIGKILLs, console page, metrics cost, custody of 100,000 serials; ~12 min).
bench: install
	$(BIN)/python bench/all.py

bench-quick: install
	$(BIN)/python bench/all.py --quick

bench-more: install
	$(BIN)/python bench/all.py --more

# Record the histories of a newly released workflow version, once: make histories VERSION=v3.
# A version's folder is never re-recorded; every later change must replay it.
histories: install
	$(BIN)/python -m tests.record_histories --version $(VERSION)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .data .pytest_cache *.egg-info
