# The one place commands live. CI calls `make test`; people call `make test` and `make run`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system services test lint format run demo bench clean

install: system $(STAMP)

system:
	@scripts/ensure-system.sh

services: system
	@scripts/ensure-system.sh --services

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --config setup.cfg
	$(BIN)/mypy scanqueue workers

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

run: install services
	$(BIN)/scanqueue run

demo: install
	$(BIN)/scanqueue demo

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache bench/results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
