# Two entry points a newcomer needs: `make run` (the main job) and `make test` (the suite).
# Both set up .venv from the pinned versions in requirements.lock first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.laminar-installed
EXAMPLE ?= examples/sales_report.yaml
# Flink's PyPI packages pin Python dependencies that conflict with ours: they go, without their
# dependencies, into a tool directory of their own (only the jars, the bin scripts and the
# pyflink Table API are used; ruamel.yaml and py4j are what that API needs to start).
FLINK_VERSION := 2.3.0
FLINK_DIR := .tools/flink
FLINK_STAMP := $(FLINK_DIR)/.installed-$(FLINK_VERSION)

.PHONY: setup flink kcat run test test-quick lint bench bench-tpch lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

flink: $(FLINK_STAMP)

$(FLINK_STAMP): $(STAMP)
	rm -rf $(FLINK_DIR)
	$(BIN)/python -m pip install --quiet --no-deps --target $(FLINK_DIR) \
		apache-flink==$(FLINK_VERSION) apache-flink-libraries==$(FLINK_VERSION) \
		"ruamel.yaml>=0.18.4,<0.20" py4j==0.10.9.7
	touch $(FLINK_STAMP)

# kcat (Debian package `kcat`) is the third-party Kafka client of tests/e2e/test_kcat.py. It is
# not on PyPI: as root, apt-get installs it (once; a no-op when present); otherwise this says how,
# and the test fails under CI (CI=true) or skips on a developer's machine.
kcat:
	@if command -v kcat >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat; }; \
	else \
		echo "kcat is missing and cannot be installed without root: sudo apt-get install kcat" \
		     "(tests/e2e/test_kcat.py fails under CI=true, skips otherwise)" >&2; \
	fi

# A pipeline with a Flink step needs the Flink tool dir; one without needs no Java at all.
run: $(STAMP)
	@if grep -Eq '^[[:space:]]*type:[[:space:]]*flink' $(EXAMPLE); then $(MAKE) --no-print-directory flink; fi
	$(BIN)/laminar run $(EXAMPLE) --once --state-dir .laminar-state/$(notdir $(basename $(EXAMPLE)))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(FLINK_STAMP) kcat
	$(BIN)/pytest -q -p no:cacheprovider

test-quick: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP) $(FLINK_STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/cluster_startup.py
	$(BIN)/python bench/spark_overhead.py
	$(BIN)/python bench/flink_overhead.py

bench-tpch: $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[bench]'
	$(BIN)/python bench/tpch.py

lock:
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .tools .laminar-state .pytest_cache .mypy_cache .ruff_cache
