# `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# bench-only packages (bench/requirements.txt), also needed by the harness's quick-run test
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint format clean mock services bench bench-deps bench-peers bench-limits node-deps faults

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash deploy/demo.sh

# The suite includes a quick run of the benchmark harness, so it installs matplotlib too. It runs in
# TEST_WORKERS processes (pytest-xdist), a test file at a time each: the integration tests mostly wait on
# their servers, so two processes halve the time on two cores. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(BENCH_STAMP) node-deps lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The JS clients that tests/integration/test_node_clients.py runs (tests/package.json: the Vercel AI SDK,
# the Codex CLI), when npm exists; without it those tests skip (and fail under CI=true).
NODE_STAMP := tests/node_modules/.installed

node-deps:
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory $(NODE_STAMP); \
		else echo "npm not found: the JS client tests will skip"; fi

$(NODE_STAMP): tests/package.json tests/package-lock.json
	cd tests && npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Start local PostgreSQL and Redis (needs root and the Debian packages; .ci/run does this),
# then e.g.: eval "$$(bash deploy/ci-services.sh)" && make test
services:
	bash deploy/ci-services.sh

# Benchmarks (docs/benchmarks.md). bench-deps: wrk (Debian package; needs root) and the
# bench-only Python packages (matplotlib for the chart, py-spy for profiles) in .venv.
PEERS := .venv-peers

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| { echo "bench: install wrk (Debian package wrk)"; exit 1; }

# The comparison: mock direct, bare proxy, Sluice, and LiteLLM when `make bench-peers` installed it.
bench: bench-deps
	$(BIN)/python bench/compare.py $(BENCH_ARGS)
	$(MAKE) bench-pg

# LiteLLM proxy in its own venv (~750 MB), used by `make bench` from then on.
bench-peers: $(PEERS)/.installed

$(PEERS)/.installed: bench/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements-peers.txt
	touch $(PEERS)/.installed

# Sluice on PostgreSQL + Redis against Sluice on SQLite; records docs/benchmarks.md "PostgreSQL path" (~3 min).
# Uses the CI PostgreSQL and Redis (deploy/ci-services.sh, as root) unless SLUICE_TEST_DATABASE_URL is set.
.PHONY: bench-pg
bench-pg: bench-deps
	@if [ -z "$$SLUICE_TEST_DATABASE_URL" ]; then eval "$$(deploy/ci-services.sh)"; fi; \
		$(BIN)/python bench/pg_path.py --write $(BENCH_PG_ARGS)

# N concurrent slow streams (1,000, 5,000, 10,000; one event every 2 s) through 2 workers, the bare proxy and
# Sluice side by side: streams live after 60 s, lag, RSS, CPU per event, connection errors (~9 min).
# e.g. CAPACITY_ARGS="--streams 1000 --hold 20"; records nothing itself (docs/benchmarks.md "Capacity").
.PHONY: bench-capacity
bench-capacity: $(STAMP)
	$(BIN)/python -m bench.capacity $(CAPACITY_ARGS)

# Keys, limits and usage records on versus off (the persistent-state issue's harness).
bench-limits: $(STAMP)
	$(BIN)/python bench/limits_overhead.py

# Stream faults x streaming dialects x resume/hedging, through gunicorn; writes docs/resilience.md (~1.5 min).
faults: $(STAMP)
	$(BIN)/python bench/faults.py $(FAULTS_ARGS)

mock: $(STAMP)
	$(BIN)/python -m app.mock_upstream --port 9100

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output tests/node_modules
