# Two commands do all set-up: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow bench histories clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/takeback dev --demo

test: install
	$(BIN)/pytest -q -rs

test-slow: install
	$(BIN)/pytest -q -rs -m slow

# Three benchmarks, each printing its own table (about 12 minutes on 2 cores): bench/run.py (~8.5 min), deadline to
# decision with mail healthy vs down (~2 min; a 10 s window instead of 20 s), receipts while the worker is SIGKILLed
# (~1.5 min; 30 s of kills per setting instead of 40 s).
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/decision_latency.py --window 10s
	$(BIN)/python bench/worker_kill_latency.py --seconds 30

# Record the histories of a newly released workflow version, once: make histories VERSION=v3.
# A version's folder is never re-recorded; every later change must replay it.
histories: install
	$(BIN)/python -m tests.record_histories --version $(VERSION)

clean:
	rm -rf $(VENV) .data .pytest_cache *.egg-info
