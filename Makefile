.DEFAULT_GOAL := help
SHELL := /bin/bash

# The demo's database (created by `eventstore db deploy` if missing).
export EVENTSTORE_DSN ?= postgresql://root@127.0.0.1:5432/utcp
# An admin connection: the test suite creates fresh databases through it.
export EVENTSTORE_TEST_DSN ?= postgresql://root@127.0.0.1:5432/postgres

VENV := .venv
BIN := $(VENV)/bin

.PHONY: help bootstrap demo test drill lint typecheck unit bench clean

help:
	@echo "make bootstrap   set up .venv, sqitch and psql; check PostgreSQL"
	@echo "make demo        deploy the schema to \$$EVENTSTORE_DSN and run the demo"
	@echo "make test        lint, typecheck and the full test suite"
	@echo "make drill       backup/restore/standby drill on private clusters (pgBackRest, PITR, pg_dump)"
	@echo "make lint        ruff check and ruff format --check"
	@echo "make typecheck   mypy --strict"
	@echo "make bench       append benchmark"
	@echo "make clean       remove .venv and caches"

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(BIN)/eventstore db deploy
	$(BIN)/python -m eventstore.demo

test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Private clusters of its own (initdb, free ports), removed at the end; see
# docs/runbook.md, "Backups and restores".
drill: bootstrap
	$(BIN)/python -m ops.drill

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: bootstrap
	$(BIN)/mypy

bench: bootstrap
	$(BIN)/python -m bench.append_bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
