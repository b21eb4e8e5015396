# Switchboard: `make run` starts the embedded default pipeline, `make test` passes the tests.
# Everything runs natively: Kafka and the schema registry come from Maven Central (infra/).

# The venv's interpreter: Debian's python3.11 where there is one (profile-guided and
# link-time optimised, as python:3.11-slim, the image's, is); this machine's pyenv build
# is neither, and a worker on it spent 17% more CPU per event (bench_core). Else python3.
PYTHON ?= $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null \
            && echo /usr/bin/python3.11 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: help install run observe test unit lint bench infra-up infra-down infra-status \
        cluster-up cluster-down topics schemas clean

help:
	@echo "make run          start Kafka + registry + the pipeline (Ctrl-C stops it all)"
	@echo "make test         run the tests against the real broker and registry"
	@echo "make bench        print spine, gateway, stateful-core and sink throughput and latency"
	@echo "make lint         ruff + mypy"
	@echo "make observe      start Prometheus (127.0.0.1:9090) scraping make run, with the alerts"
	@echo "make infra-up     start the single-node Kafka, the schema registry and PostgreSQL"
	@echo "make infra-down   stop them"
	@echo "make cluster-up   start the 3-broker KRaft cluster (19092-19094)"
	@echo "make cluster-down stop it"
	@echo "make clean        stop everything and delete broker/registry data"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint constraints.txt --editable ".[dev]"
	touch $@

# Prometheus is only installed: the tests start their own, on their own port.
infra-up:
	@bash infra/prometheus/prometheus.sh install
	@bash infra/kafka/kafka.sh start single & kafka=$$!; \
	 bash infra/registry/registry.sh start & registry=$$!; \
	 bash infra/postgres/postgres.sh start & postgres=$$!; \
	 status=0; wait $$kafka || status=1; wait $$registry || status=1; \
	 wait $$postgres || status=1; exit $$status

infra-down:
	@bash infra/prometheus/prometheus.sh stop
	@bash infra/postgres/postgres.sh stop
	@bash infra/registry/registry.sh stop
	@bash infra/kafka/kafka.sh stop single

infra-status:
	@bash infra/kafka/kafka.sh status single; bash infra/registry/registry.sh status; \
	 bash infra/postgres/postgres.sh status

cluster-up:
	@bash infra/kafka/kafka.sh start cluster

cluster-down:
	@bash infra/kafka/kafka.sh stop cluster

topics: install
	$(BIN)/switchboard topics create

schemas: install
	$(BIN)/switchboard schemas register

run: install
	@bash infra/run.sh

observe:
	@bash infra/prometheus/prometheus.sh start

test: install infra-up
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install infra-up
	$(BIN)/python -m tests.bench.bench_spine
	$(BIN)/python -m tests.bench.bench_gateway
	$(BIN)/python -m tests.bench.bench_core
	$(BIN)/python -m tests.bench.bench_stages
	$(BIN)/python -m tests.bench.bench_state
	$(BIN)/python -m tests.bench.bench_timers
	$(BIN)/python -m tests.bench.bench_workflows
	$(BIN)/python -m tests.bench.bench_sinks
	$(BIN)/python -m tests.bench.bench_store
	$(BIN)/python -m tests.bench.bench_e2e
	$(BIN)/python -m tests.bench.bench_lookup
	$(BIN)/python -m tests.bench.bench_qualification

clean:
	-@bash infra/prometheus/prometheus.sh stop
	-@bash infra/postgres/postgres.sh stop
	-@bash infra/registry/registry.sh stop
	-@bash infra/kafka/kafka.sh stop single
	-@bash infra/kafka/kafka.sh stop cluster
	rm -rf .run
