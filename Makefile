# Two commands do all set-up: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow bench histories clean chromium

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

# Six benchmarks, each printing its own table (about 20 minutes on 2 cores): bench/run.py (~8.5 min), deadline to
# decision with mail healthy vs down (~2 min; a 10 s window instead of 20 s), receipts while the worker is SIGKILLed
# (~1.5 min; 30 s of kills per setting instead of 40 s), the console's deals page with 10,000 deals (~30 s), booking
# with metrics and traces off and on (~1.5 min).
# bench/custody.py: a deal of 100,000 serials with custody events, one serial's timeline and the whole certificate
# as HTML and PDF, beside a deal of 10,000 to show whether memory grows with the deal (~6.5 min).
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/decision_latency.py --window 10s
	$(BIN)/python bench/worker_kill_latency.py --seconds 30
	$(BIN)/python bench/console_page.py
	$(BIN)/python bench/observability_cost.py
	$(BIN)/python bench/custody.py

# Record the histories of a newly released workflow version, once: make histories VERSION=v3.
# A version's folder is never re-recorded; every later change must replay it.
histories: install
	$(BIN)/python -m tests.record_histories --version $(VERSION)

clean:
	rm -rf $(VENV) .data .pytest_cache *.egg-info
