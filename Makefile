# Two commands on a fresh machine: `make run` and `make test`. Everything goes through uv and uv.lock.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help uv env run serve demo test lint format schema bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

uv: ## install uv when it is missing
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

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
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis
