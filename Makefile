# The team's memory: every target does its own set-up, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo rollout-demo test browser lint check bench soak soak-faults bench-report bench-shadow bench-overload bench-conformance bench-tables bench-protocols bench-grpc bench-tracing calibration calibration-rollout clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the two example backends and the router on config/routes.yaml (Ctrl-C stops all three)
run: $(STAMP)
	$(BIN)/python -m backends.stack --config config/routes.yaml

## demo: the example stack, a few thousand simulated users with feedback, then the report on their log
demo: $(STAMP)
	$(BIN)/python examples/demo.py

## rollout-demo: two guarded rollouts by the controller, on real processes: a healthy v2 promoted, a failing one rolled back
rollout-demo: $(STAMP)
	$(BIN)/python -m examples.rollout_demo

# Seldon's MLServer for the suite's test against a real model server: a virtualenv of its own,
# since it pins FastAPI, uvicorn and protobuf versions the router must not be bound to.
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed
$(MLSERVER_STAMP):
	test -d $(MLSERVER_VENV) || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet 'mlserver==1.7.1' 'mlserver-sklearn==1.7.1'
	touch $(MLSERVER_STAMP)

## test: the whole suite, on real servers on loopback ports (MLServer in a virtualenv of its own)
test: $(STAMP) $(MLSERVER_STAMP)
	$(BIN)/python -m pytest

## browser: Debian's chromium for the headless browser test (installed if missing and we are root)
browser:
	command -v chromium >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## check: validate the default routing table
check: $(STAMP)
	$(BIN)/model-router check config/routes.yaml

## bench: model-router against nginx and a direct backend with wrk (installs wrk and nginx if missing)
bench: $(STAMP)
	command -v wrk >/dev/null && command -v nginx >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)
	$(BIN)/python bench/proxy_bench.py
	$(BIN)/python bench/tracing_bench.py

## bench-tracing: span export's cost, off against sample 0.01 and 1.0, to a real OTLP/HTTP receiver (installs wrk and nginx if missing)
bench-tracing: $(STAMP)
	command -v wrk >/dev/null && command -v nginx >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)
	$(BIN)/python bench/tracing_bench.py

## soak: 60 s at 256 connections through 2 workers: no failure, no lost record, no leak
soak: $(STAMP)
	command -v wrk >/dev/null && command -v nginx >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)
	$(BIN)/python bench/soak.py

## soak-faults: load through 2 workers while faults strike (disk full on a tmpfs, a backend killed, a worker SIGKILLed, SIGHUP storms, 500 slowloris feedback posts): every answer has one record or is counted as dropped; no leak
soak-faults: $(STAMP)
	command -v wrk >/dev/null && command -v nginx >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)
	$(BIN)/python bench/soak_faults.py

## bench-report: time the report on 5,000,000 synthetic records against a bare DuckDB scan, `logs compact` and the report on its Parquet; then --engine spark (local[2]) beside DuckDB on 5,000,000 and 20,000,000 records
bench-report: $(STAMP)
	$(BIN)/python bench/report_bench.py
	$(BIN)/python bench/report_spark_bench.py --keep

## bench-shadow: a shadow at 100% (healthy, 10x slower, down) against none: client req/s, p50, p99, router memory
bench-shadow: $(STAMP)
	command -v wrk >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/shadow_bench.py

## bench-overload: 10,000 clients at once on a 1 s backend, then 5,000 slowloris connections against wrk: 200s, 503s, drops, p99, router memory
bench-overload: $(STAMP)
	command -v wrk >/dev/null && command -v nginx >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)
	$(BIN)/python bench/overload_bench.py

## bench-conformance: the public HTTP/1.1 suites (h1spec, http-desync-guardian, Http11Probe), model-router and nginx side by side
bench-conformance: $(STAMP)
	command -v nginx >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light)
	$(BIN)/python bench/conformance_suites.py

## bench-tables: routing tables of 1 to 10,000 models (0 or 20 rules) and a 50,000-user rule: check against CSafeLoader, router memory, latency through 5 reloads and through /metrics scrapes under wrk
bench-tables: $(STAMP)
	command -v wrk >/dev/null && command -v nginx >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)
	$(BIN)/python bench/table_bench.py

## bench-protocols: OIP infer and time to first token of a streamed OpenAI answer, through the router against direct (installs wrk if missing)
bench-protocols: $(STAMP)
	command -v wrk >/dev/null || [ "$$(id -u)" -ne 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/protocols_bench.py

## bench-grpc: unary ModelInfer and a ModelStreamInfer call through the router (1 and 2 workers) against direct to an example gRPC backend, and a py-spy profile of the router
bench-grpc: $(STAMP)
	$(BIN)/python bench/grpc_bench.py

## calibration: the statistics engine's false-positive rates, power and coverage, by simulation
calibration: $(STAMP)
	$(BIN)/python -m tests.test_stats_calibration

## calibration-rollout: 500 simulated A/A rollouts and 100 of each regression (about 30 min)
calibration-rollout: $(STAMP)
	$(BIN)/python -m tests.test_rollout_calibration 500 100

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) .pytest_cache .mypy_cache .ruff_cache
