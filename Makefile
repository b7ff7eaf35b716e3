# `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format clean mock services bench

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash deploy/demo.sh

test: $(STAMP) lint
	$(BIN)/pytest $(PYTEST_ARGS)

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

bench: $(STAMP)
	$(BIN)/python bench/limits_overhead.py

mock: $(STAMP)
	$(BIN)/python -m app.mock_upstream --port 9100

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
