# Puhui: the two contract commands are `make demo` and `make test`; both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint format clean

# --no-compile: no bytecode for all ~15k installed modules up front; Python compiles (and
# caches) only what is imported.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install Puhui with its pinned dependencies

demo: $(STAMP)  ## synthetic landing zone + the whole daily pipeline on the embedded default
	$(BIN)/puhui demo $(DEMO_ARGS)

# The suite runs on TEST_WORKERS pytest-xdist workers (default: the cores, at most 2; 0 runs
# it in this one process). A test file runs whole on one worker, longest files first
# (tests/conftest.py), so module fixtures are built once and a file's order is kept.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 2 ? n : 2 )))
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)  ## the full suite, PostgreSQL tests included (a throwaway server per worker)
	$(PYTEST) --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the suite without the slow end-to-end tests
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)  ## benchmarks: print figures and write them to bench/results/
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf .puhui .pytest_cache .ruff_cache
