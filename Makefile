# Two commands on a fresh machine: `make run` and `make test`. Everything goes through uv and uv.lock.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv comes from PATH when it is there; otherwise it is installed into a project-local tools venv
# (.tools/, made with `python3 -m venv`), so a distribution Python that refuses `pip install`
# (PEP 668: Debian 12, Ubuntu 24.04) is never touched.
TOOLS_VENV := .tools
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/$(TOOLS_VENV)/bin/uv)
# uv never downloads a Python of its own: the system's Python 3.11+ is the interpreter.
export UV_PYTHON_DOWNLOADS := never
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help uv env run serve demo test lint format schema bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

uv: ## install uv into .tools/ when none is on PATH (never into the system Python)
	@if [ ! -x "$(UV)" ]; then \
	  command -v python3 >/dev/null 2>&1 || { echo "error: python3 (3.11 or newer) is not on PATH" >&2; exit 1; }; \
	  echo "uv is not on PATH: installing uv $(UV_VERSION) into $(TOOLS_VENV)/ (a venv of its own)"; \
	  python3 -m venv $(TOOLS_VENV) >/dev/null 2>&1 || { rm -rf $(TOOLS_VENV); \
	    echo "error: 'python3 -m venv' failed. On Debian/Ubuntu install the venv module:" >&2; \
	    echo "         sudo apt-get install python3-venv" >&2; \
	    echo "       or put uv on PATH yourself (https://docs.astral.sh/uv/), then run make again." >&2; exit 1; }; \
	  $(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)" \
	    || { rm -rf $(TOOLS_VENV); echo "error: could not install uv into $(TOOLS_VENV)/" >&2; exit 1; }; \
	fi

env: uv ## create .venv from uv.lock
	@$(UV) sync --frozen --quiet

run: env ## seed demo data on the embedded defaults and serve on http://$(HOST):$(PORT)
	@$(UV) run --frozen gateway init-db
	@$(UV) run --frozen gateway demo-data
	@echo ""
	@echo "  Artifact Lineage Gateway on http://$(HOST):$(PORT)"
	@echo "    GraphiQL        http://$(HOST):$(PORT)/graphql"
	@echo "    artifact 24     http://$(HOST):$(PORT)/api/artifacts/24"
	@echo "    health/metrics  http://$(HOST):$(PORT)/healthz  http://$(HOST):$(PORT)/metrics"
	@echo "    try: curl -s $(HOST):$(PORT)/graphql -H 'content-type: application/json' \\"
	@echo "           -d '{\"query\":\"{ artifact(id: 24) { id name runId imageUrl } }\"}'"
	@echo ""
	@GATEWAY_LOG_FORMAT=$${GATEWAY_LOG_FORMAT:-console} $(UV) run --frozen gateway serve --host $(HOST) --port $(PORT)

test: env ## run every test (PostgreSQL tests run when it is reachable)
	@$(UV) run --frozen pytest $(PYTEST_ARGS)

lint: env ## ruff (lint + format check) and mypy --strict
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen mypy

format: env ## apply ruff fixes and formatting
	@$(UV) run --frozen ruff check --fix .
	@$(UV) run --frozen ruff format .

schema: env ## regenerate schema.graphql from the code
	@$(UV) run --frozen gateway export-schema -o schema.graphql

bench: env ## run the benchmarks in bench/ (prints medians and ratios)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(UV) run --frozen python $$b || exit 1; done

clean: ## remove generated state (databases, caches); keeps .venv
	rm -rf var .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis
