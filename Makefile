# Everyday commands; CI (.ci/run) runs the same checks on a fresh machine.
#   make venv       the project venv with the dev extra (editable install)
#   make lint       ruff, ruff format --check, mypy (package and tests), lint-imports, vulture
#   make test       the whole suite (what .ci/run measures)
#   make test-fast  everything not marked slow (no real redis-server / worker processes)

VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv lint test test-fast

venv:
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/vulture

test:
	$(BIN)/python -m pytest

test-fast:
	$(BIN)/python -m pytest -m "not slow"
