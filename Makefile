# Thin UI over the commands the README documents. Every target works on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
RUN_DIR := var/run

.DEFAULT_GOAL := help
.PHONY: help install run up down rest test lint lint-deploy format docs ecosystem bench build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,docs,deploy,ecosystem]'
	tests/ecosystem/make_tangogql_venv.sh
	touch $@

install: $(VENV)/.installed ## create .venv with the project, its test, docs and lint tools

run: install ## start the whole stack (Tango DB on sqlite, devices, REST gateway); Ctrl-C stops it
	$(BIN)/oet-stack --scripts $(CURDIR)/scripts

up: install ## start the stack in the background (logs in var/run/stack.log)
	@mkdir -p $(RUN_DIR)
	@if [ -f $(RUN_DIR)/stack.pid ] && kill -0 $$(cat $(RUN_DIR)/stack.pid) 2>/dev/null; then \
		echo "already up (pid $$(cat $(RUN_DIR)/stack.pid))"; exit 0; fi; \
	$(BIN)/oet-stack --scripts $(CURDIR)/scripts > $(RUN_DIR)/stack.log 2>&1 & echo $$! > $(RUN_DIR)/stack.pid; \
	for i in $$(seq 600); do \
		grep -q "Ctrl-C stops the stack" $(RUN_DIR)/stack.log && { cat $(RUN_DIR)/stack.log; exit 0; }; \
		kill -0 $$(cat $(RUN_DIR)/stack.pid) 2>/dev/null || { cat $(RUN_DIR)/stack.log; exit 1; }; \
		sleep 0.1; done; echo "stack not ready after 60 s"; exit 1

down: ## stop the stack started by 'make up'
	@if [ -f $(RUN_DIR)/stack.pid ]; then kill -TERM $$(cat $(RUN_DIR)/stack.pid) 2>/dev/null; \
		while kill -0 $$(cat $(RUN_DIR)/stack.pid) 2>/dev/null; do sleep 0.1; done; \
		rm -f $(RUN_DIR)/stack.pid; echo "stack stopped"; else echo "not up"; fi

rest: install ## run the REST gateway alone, in front of the devices of $$TANGO_HOST
	$(BIN)/oet-gateway

test: install lint lint-deploy ## lint everything, then run the whole test suite
	$(PY) -m pytest

lint: install ## ruff lint and format check, and the import contract of docs/architecture.md
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

lint-deploy: install ## lint the Dockerfile and Helm chart, build the docs (warnings are errors)
	.ci/lint-deploy

format: install ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

docs: install ## build the documentation into docs/_build/html
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

ecosystem: install ## Taranta (tangogql), itango and dsconfig checks against the embedded stack
	$(PY) -m pytest tests/ecosystem

bench: install ## run the benchmarks on a real 16-subarray stack (a few minutes): benchmarks/results.{json,md}
	$(PY) -m benchmarks

build: ## build the container image (needs a Docker engine)
	docker build -t ska-oso-oet:$$($(PY) -c 'import ska_oso_oet; print(ska_oso_oet.__version__)') \
		--build-arg VCS_REF=$$(git rev-parse HEAD) .
