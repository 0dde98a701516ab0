# Two commands do all set-up: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow bench bench-quick bench-more histories clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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

# Issue 15's measures, each on a stack of its own, one after another (bench/all.py; under 15 minutes on 2 cores):
# the booking grid (API vs raw SDK starts at concurrency 1/8/32, SQLite and PostgreSQL), a deadline storm of 5,000
# deals, lifecycle / round trips / reads / parked deals on both stores, 1 vs 2 workers, and what a deal costs.
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
	rm -rf $(VENV) .data .pytest_cache *.egg-info
