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

demo: setup
	$(BIN)/rankscope demo

test: setup
	$(BIN)/python -m pytest -q
