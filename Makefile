# Puhui: the two contract commands are `make demo` and `make test`; both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint format clean

# Bytecode is compiled once here, on every core, not left to the first import: where
# PYTHONDONTWRITEBYTECODE is set (this CI's machine sets it) Python never caches what it
# compiles, and every process that imports the stack (each CLI command, flow run, test
# subprocess) compiled prefect, mlflow and GX again: 19.7 s of CPU against 8.1 s with
# bytecode. whenever's _typing_312.py is Python 3.12 syntax that 3.11 never imports.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e ".[dev]"
	$(BIN)/python -m compileall -q -j 0 -x '/whenever/_typing_312\.py$$' $(VENV)/lib
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
