# Iatros — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
# The interpreter: Debian's python3.11 where there is one (built with profile-guided and
# link-time optimisation, libpython linked in), else python3.11 or python3 on PATH. The
# gateway served about 20% more cache hits per second of CPU on Debian's build than on a
# default pyenv build (shared libpython, no PGO) on the same VM: bench/README.md.
PYTHON ?= $(shell for p in /usr/bin/python3.11 python3.11 python3; do \
            command -v $$p >/dev/null 2>&1 && $$p -c 'import ensurepip' 2>/dev/null \
            && { command -v $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
# Named after the interpreter: another PYTHON gets a new venv.
STAMP := $(VENV)/.installed$(subst /,-,$(PYTHON))

.PHONY: install run test lint typecheck docs bench bench-smoke clean

install: $(STAMP)

# torch comes first, pinned: pip then takes the local CPU build instead of a CUDA one.
# llama-cpp-python compiles llama.cpp (4 to 12 minutes the first time on a machine; the
# script keeps the wheel per CPU and says why it does not leave that to pip).
$(STAMP): pyproject.toml scripts/install-llama.sh
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet torch==2.13.0
	bash scripts/install-llama.sh $(BIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	bash scripts/install-browser.sh
	bash scripts/install-speech.sh
	bash scripts/install-system.sh
	bash scripts/install-prometheus.sh
	touch $(STAMP)

# The site is built first (about 5 s), so /help always matches this checkout; building it
# inside `iatros serve` instead would make the server depend on MkDocs, a dev tool.
run: docs
	$(BIN)/iatros serve

lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy

test: install lint typecheck docs
	$(BIN)/pytest

# The documentation site (mkdocs.yml, docs/), built strictly into src/iatros/web/help,
# which the server then serves at /help; the reference pages are generated from the code.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# bench/run.py: the 15-minute suite (Iatros vs LiteLLM, installed once into bench/.peers);
# the local model's tokens/s run apart, into bench/results/local/.
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/run.py --only local --out bench/results/local
	$(BIN)/python bench/chaos.py
	$(BIN)/python bench/cache_bench.py
	$(BIN)/python bench/scribe_bench.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/experiments_sim.py

bench-smoke: install
	$(BIN)/python bench/run.py --smoke
	$(BIN)/python bench/run.py --smoke --only local
	$(BIN)/python bench/chaos.py --smoke
	$(BIN)/python bench/cache_bench.py --smoke
	$(BIN)/python bench/experiments_sim.py --smoke
	$(BIN)/python bench/faithfulness_bench.py --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
