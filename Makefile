# Every target sets up what it needs: a virtualenv, Python deps, the tiktoken files, and
# (for demo/test) the local stack of real Kafka, Redis and Temporal.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test check stack-up stack-down bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "memstream needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)
	$(BIN)/memstream encodings install

stack-up: install
	$(BIN)/memstream stack up

stack-down:
	$(BIN)/memstream stack down

demo: stack-up
	$(BIN)/memstream demo

test: stack-up
	$(BIN)/python -m pytest

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict memory_core consumers schemas
	$(BIN)/lint-imports

# Every benchmark's targets gate CI; each is measured once more if a noisy run misses. The
# latency targets gate only where the apply path meets them (benchmarks.latency.GATING).
# Only the services the benchmarks use: the others (a JVM registry, Prometheus, Jaeger, six
# cluster nodes) would take CPU from what is measured.
bench: install
	$(BIN)/memstream stack up --only kafka,redis,temporal
	$(BIN)/python -m benchmarks tokens store || $(BIN)/python -m benchmarks tokens store
	$(BIN)/python -m benchmarks pipeline || $(BIN)/python -m benchmarks pipeline
	$(BIN)/python -m benchmarks restart || $(BIN)/python -m benchmarks restart
	$(BIN)/python -m benchmarks latency || $(BIN)/python -m benchmarks latency
	$(BIN)/python -m benchmarks wait || $(BIN)/python -m benchmarks wait
	$(BIN)/python -m benchmarks recovery || $(BIN)/python -m benchmarks recovery

clean: stack-down
	rm -rf $(VENV) .memstream
