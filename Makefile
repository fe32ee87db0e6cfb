# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(BIN)/rankscope: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/rankscope

.PHONY: setup demo test
setup: $(BIN)/rankscope

# The main job: a quick MSR-DARTS search on the embedded digits, then a quick training run of the
# genotype it found, printing the test error.
demo: setup
	$(BIN)/rankscope search --preset quick --out runs/demo-search
	$(BIN)/rankscope train --preset quick --genotype runs/demo-search/genotype.json --out runs/demo-train

test: setup
	$(BIN)/python -m pytest -q
