.DEFAULT_GOAL := help
SHELL := /bin/bash

# The default DSNs' port: 5432 if a server answers there, else the
# project-local cluster's (scripts/local-pg.sh; bootstrap starts it, `make
# stop` stops it). Not asked when both DSNs are set.
ifneq ($(filter undefined,$(origin EVENTSTORE_DSN) $(origin EVENTSTORE_TEST_DSN)),)
PG_PORT := $(shell scripts/local-pg.sh port)
endif
# The demo's database (created by `eventstore db deploy` if missing).
export EVENTSTORE_DSN ?= postgresql://root@127.0.0.1:$(PG_PORT)/utcp
# An admin connection: the test suite creates fresh databases through it.
export EVENTSTORE_TEST_DSN ?= postgresql://root@127.0.0.1:$(PG_PORT)/postgres
# 1 when a default DSN points at the project-local cluster: bootstrap starts
# it. Always set here, never inherited from an outer make.
ifneq ($(PG_PORT),$(or $(EVENTSTORE_DEFAULT_PORT),5432))
ifneq ($(PG_PORT),)
LOCAL_PG := 1
endif
endif
export EVENTSTORE_LOCAL_PG := $(LOCAL_PG)

VENV := .venv
BIN := $(VENV)/bin

.PHONY: help bootstrap demo test drill stop lint typecheck unit bench bench-quick bench-http clean

help:
	@echo "make bootstrap   set up .venv, sqitch and psql; check PostgreSQL"
	@echo "make demo        deploy the schema to \$$EVENTSTORE_DSN and run the demo"
	@echo "make test        lint, typecheck and the full test suite"
	@echo "make drill       backup/restore/standby drill on private clusters (pgBackRest, PITR, pg_dump)"
	@echo "make stop        stop the project-local PostgreSQL (if bootstrap started one)"
	@echo "make lint        ruff check and ruff format --check"
	@echo "make typecheck   mypy --strict"
	@echo "make bench       the benchmark: store vs raw psycopg vs eventsourcing (bench/README.md)"
	@echo "make bench-quick the same, CI-sized (under 3 minutes)"
	@echo "make bench-http  tool calls over HTTP against the library (1 and 16 clients)"
	@echo "make clean       remove .venv and caches"

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(BIN)/eventstore db deploy
	$(BIN)/python -m storectl.demo

test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Private clusters of its own (initdb, free ports), removed at the end; see
# docs/runbook.md, "Backups and restores".
drill: bootstrap
	$(BIN)/python -m storectl.drill

# The project-local cluster (.pgdata/), if bootstrap started one.
stop:
	@scripts/local-pg.sh stop

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: bootstrap
	$(BIN)/mypy

# Creates (and drops) a database of its own through $EVENTSTORE_TEST_DSN;
# the eventsourcing library is installed for it only (the `bench` extra).
bench:
	@EVENTSTORE_EXTRAS=dev,service,bench scripts/bootstrap.sh
	$(BIN)/python -m bench.run --dsn "$(EVENTSTORE_TEST_DSN)"

bench-quick:
	@EVENTSTORE_EXTRAS=dev,service,bench scripts/bootstrap.sh
	$(BIN)/python -m bench.run --quick --dsn "$(EVENTSTORE_TEST_DSN)"

# Its own database (utcp_http_bench, dropped and re-created); see bench/README.md.
bench-http: bootstrap
	$(BIN)/python -m bench.http_bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
