# `make demo` and `make test` do their set-up (venv, torch, the project, Debian packages), then run.
# `make demo` installs what the demo needs only (no test tools, PostgreSQL or chromium).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-demo demo demo-search demo-finalize demo-export demo-compare test test-faults test-all \
	lint bench clean

setup:
	@./scripts/setup.sh

## The default demo, each step a target of its own (benchmarks/demo.py times them one by one):
## set-up without the test tools, search, finalize the front on the full training split,
## export it (re-verified), then LeNet-5 and simpler baselines trained with the same recipe and
## budget, compared with the exported models in the last lines.
DEMO_RUN ?= runs/fashion-mnist
DEMO_EPOCHS ?= 2

demo: setup-demo
	@$(MAKE) --no-print-directory demo-search
	@$(MAKE) --no-print-directory demo-finalize
	@$(MAKE) --no-print-directory demo-export
	@$(MAKE) --no-print-directory demo-compare

setup-demo:
	@./scripts/setup.sh --demo

demo-search:
	$(BIN)/nas run experiments/fashion_mnist.yaml --workers 2 --out $(DEMO_RUN)

demo-finalize:
	$(BIN)/nas finalize $(DEMO_RUN) --epochs $(DEMO_EPOCHS) --workers 2

demo-export:
	$(BIN)/nas export $(DEMO_RUN) --select front

demo-compare:
	$(BIN)/python experiments/demo_compare.py $(DEMO_RUN)

## Lint + the default (fast) test suite.
test: setup lint
	$(BIN)/python -m pytest -q

## Processes and Ray nodes killed at random moments (a few minutes; CI runs it after `test`).
test-faults: setup
	$(BIN)/python -m pytest -q -m faults

test-all: setup lint
	$(BIN)/python -m pytest -q -m "slow or not slow or faults"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/demo.py

clean:
	rm -rf runs .pytest_cache
