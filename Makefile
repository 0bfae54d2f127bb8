# Two entry points a newcomer needs: `make run` (the main job) and `make test` (the suite).
# Both set up .venv from the pinned versions in requirements.lock first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.laminar-installed
EXAMPLE ?= examples/sales_report.yaml

.PHONY: setup run test test-quick lint bench lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/laminar run $(EXAMPLE) --once --state-dir .laminar-state/$(notdir $(basename $(EXAMPLE)))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

test-quick: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/cluster_startup.py

lock:
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .laminar-state .pytest_cache .mypy_cache .ruff_cache
