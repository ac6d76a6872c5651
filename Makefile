# `make demo` and `make test` do all set-up (venv, torch, the project, Debian data) then run.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all lint bench clean

setup:
	@./scripts/setup.sh

## The default search demo: Fashion-MNIST, 2 workers, front + export with re-verification.
demo: setup
	$(BIN)/nas run experiments/fashion_mnist.yaml --workers 2
	$(BIN)/nas export runs/fashion-mnist --select front

## Lint + the default (fast) test suite.
test: setup lint
	$(BIN)/python -m pytest -q

test-all: setup lint
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/demo.py

clean:
	rm -rf runs .pytest_cache
