# tfmed: every target bootstraps the pinned virtual environment it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NAME ?= pneumonia_mnist
PYTEST_ARGS ?=
# two workers: the test suite runs in about 60% of the one-process time on two cores
PYTEST_WORKERS ?= 2

.PHONY: venv test experiment benchmarks clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --doctest-modules $(PYTEST_ARGS) tests tfmed

experiment: $(STAMP)
	$(BIN)/tfmed run experiments/$(NAME).yaml

# every script runs; the target fails at the end when one failed (a goal not met, or an error)
benchmarks: $(STAMP)
	failed=""; for b in benchmarks/[a-z]*.py; do $(BIN)/python $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
