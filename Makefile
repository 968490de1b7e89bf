# mlsignal — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
BUNDLE ?= artifacts/quick
DATA   ?= sp500,nasdaq

.PHONY: install run train test lint format gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the CPU build on this disk, so that resolving the package's own
# `torch>=2.2` installs nothing more (no multi-gigabyte CUDA wheel on a CPU machine).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

$(BUNDLE)/manifest.json: | install
	$(BIN)/mlsignal train --data $(DATA) --out $(BUNDLE) --preset quick

train: $(BUNDLE)/manifest.json

run: install
	$(BIN)/mlsignal demo --bundle $(BUNDLE) --data $(DATA)

lint: install
	$(BIN)/ruff check src tests scripts examples
	$(BIN)/ruff format --check src tests scripts examples

format: install
	$(BIN)/ruff format src tests scripts examples
	$(BIN)/ruff check --fix src tests scripts examples

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache
