# The team's memory: every target does its own set-up, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the two example backends and the router on config/routes.yaml (Ctrl-C stops all three)
run: $(STAMP)
	$(BIN)/python -m backends.stack --config config/routes.yaml

## test: the whole suite, on real servers on loopback ports
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check router backends tests
	$(BIN)/ruff format --check router backends tests
	$(BIN)/mypy

## check: validate the default routing table
check: $(STAMP)
	$(BIN)/model-router check config/routes.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
