# The front door. `make up` runs the whole stack on this machine (no Docker);
# `make test` installs what is missing and runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help install system-deps kafka-jars up down status clean test test-fast compose-test chaos lint fmt typecheck check bench bench-quick

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "[make] creating $(VENV) and installing Python packages ..."
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

system-deps: ## install PostgreSQL, Java and Maven if missing (apt-get, as root)
	@bash devstack/install-system.sh

kafka-jars: $(STAMP) ## fetch the Kafka broker's jars from Maven Central (once)
	@$(PY) -m devstack install-kafka

install: system-deps $(STAMP) kafka-jars ## everything `make up` needs

up: install ## start PostgreSQL, Kafka, migrations, the three APIs, relays and consumer
	@$(PY) -m devstack up

down: ## stop everything `make up` started (data stays)
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

status: ## show what runs, with PIDs and log files
	@$(PY) -m devstack status

clean: ## stop and delete all local data and logs (also a cluster kept under /var/tmp), and test stacks whose session has ended
	@if [ -x $(PY) ]; then $(PY) -m devstack clean; else rm -rf .devstack/test-*; fi
	rm -rf .devstack/pgdata .devstack/kafka .devstack/kafka-cluster .devstack/kafka-nodes .devstack/pgdata-replica .devstack/pg-replica-port .devstack/logs .devstack/run

test: ## install what is missing and run the whole test suite against fresh servers
	@bash devstack/install-system.sh --test
	@$(MAKE) --no-print-directory $(STAMP) kafka-jars
	@set +e; $(PY) -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP) ## the suite without the slow fault-injection tests
	@$(MAKE) --no-print-directory test PYTEST_ARGS='-m "not slow"'

compose-test: $(STAMP) ## docker-compose.yml for real: its own dockerd, images built here, black-box tests on it and its cluster profile
	@$(PY) -m devstack.compose test

chaos: ## the longer fault and fuzz runs: 3 chaos rounds (24 kill -9, broker stopped 30 s), 5 Kafka node outages, >= 1,000 fuzzed requests per API, 1,000 fuzzed batches of Kafka records
	@CHAOS_ROUNDS=3 CHAOS_BROKER_STOP=30 CLUSTER_FAULTS=5 FUZZ_MAX_EXAMPLES=100 FUZZ_MIN_REQUESTS=1000 \
		WIRE_FUZZ_EXAMPLES=1000 WIRE_FUZZ_SEED=$${WIRE_FUZZ_SEED:-$$(date +%s)} $(MAKE) --no-print-directory test \
		PYTEST_ARGS='-s tests/e2e/test_chaos.py tests/e2e/test_kafka_cluster.py tests/e2e/test_fuzz_apis.py tests/e2e/test_wire_fuzz.py tests/integration/test_hostile_events.py tests/integration/test_wire_records.py'

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP) ## ruff format + fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP) ## mypy --strict
	$(VENV)/bin/mypy .

check: lint typecheck ## lint and types

bench: install ## full benchmark (1M orders / 10M goods, 1M events): long
	@bash devstack/install-system.sh --bench
	@$(PY) -m bench

bench-quick: install ## the same measurements at a small scale, a few minutes
	@bash devstack/install-system.sh --bench
	@$(PY) -m bench --quick
