# mlsignal — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Where the CPU build of torch comes from when no local wheel has it (machines without a GPU).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
BUNDLE ?= artifacts/quick
DATA   ?= sp500,nasdaq

.PHONY: install run train test lint format gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, so that resolving the package's own `torch>=2.2` installs nothing more. Without
# an NVIDIA GPU: the CPU build, named explicitly (`+cpu`): a local wheel if pip's find-links
# hold one, else from TORCH_INDEX_URL, never the multi-gigabyte CUDA build that the package
# index serves as plain `torch`. With a GPU: the package index's build (CUDA).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
ifeq ($(HAS_GPU),yes)
	@echo "install: NVIDIA GPU found: torch==$(TORCH_VERSION) from the package index (CUDA build)"
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)"
else
	@echo "install: no NVIDIA GPU: torch==$(TORCH_VERSION)+cpu (CPU build; a local wheel, else $(TORCH_INDEX_URL))"
	$(BIN)/pip install -q --no-index "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
		$(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" --extra-index-url "$(TORCH_INDEX_URL)"
endif
	$(BIN)/pip install -q -e ".[all,dev]"
	@$(BIN)/python -c "import torch; print('install: torch', torch.__version__, '(CUDA', torch.version.cuda, ')')"
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
