# The two commands of the README: `make demo` and `make test`. Each makes its own venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration bench clean

$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade 'pip>=24'
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/finops demo

test: $(STAMP) lint typecheck
	$(BIN)/pytest -n 2 --dist loadfile -q --durations=25

lint: $(STAMP)
	$(BIN)/ruff check backend tests migrations bench scripts
	$(BIN)/ruff format --check backend tests migrations bench scripts
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy backend

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash bench/scan-vs-floor.sh

clean:
	rm -rf $(VENV) .finops .pytest_cache .mypy_cache .ruff_cache
