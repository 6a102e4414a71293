# Iatros — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck bench bench-smoke clean

install: $(STAMP)

# torch comes first, pinned: pip then takes the local CPU build instead of a CUDA one.
# llama-cpp-python compiles llama.cpp (about 4 minutes the first time on a machine; the
# script keeps the wheel per CPU and says why it does not leave that to pip).
$(STAMP): pyproject.toml scripts/install-llama.sh
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet torch==2.13.0
	bash scripts/install-llama.sh $(BIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	bash scripts/install-browser.sh
	touch $(STAMP)

run: install
	$(BIN)/iatros serve

lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/pytest

# bench/run.py: the 15-minute suite (Iatros vs LiteLLM, installed once into bench/.peers);
# the local model's tokens/s run apart, into bench/results/local/.
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/run.py --only local --out bench/results/local
	$(BIN)/python bench/chaos.py
	$(BIN)/python bench/cache_bench.py

bench-smoke: install
	$(BIN)/python bench/run.py --smoke
	$(BIN)/python bench/run.py --smoke --only local
	$(BIN)/python bench/chaos.py --smoke
	$(BIN)/python bench/cache_bench.py --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
