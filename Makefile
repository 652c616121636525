# Thin UI over the commands the README documents. Every target works on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install run test lint format

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the project with its test tools

run: install ## start the whole stack on the embedded Tango database (Ctrl-C stops it)
	$(BIN)/oet-stack

test: install ## run lint and the test suite
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(PY) -m pytest

lint: install ## ruff lint and format check
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: install ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests
