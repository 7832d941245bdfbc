# Set-up and checks. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Write a Python function that reverses a linked list.
SERVE_ARGS ?=  # e.g. make serve SERVE_ARGS="--port 9000 --api-key KEY"
LLAMA_CPP_VERSION := 0.3.36
# llama.cpp compiled without llamafile's tinyBLAS: those batched kernels round differently
# from one-token decoding, which would break token-for-token equality of greedy speculative
# decoding. The wheel is built once (5-12 minutes on two cores) and kept here.
WHEELS ?= $(HOME)/.cache/adaspec/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-nollamafile

.PHONY: install run serve test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  (echo "building llama-cpp-python $(LLAMA_CPP_VERSION) without llamafile (5-12 minutes)" && \
	   CMAKE_ARGS="-DGGML_LLAMAFILE=OFF" $(BIN)/python -m pip wheel --quiet --no-deps \
	     --no-cache-dir -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION))
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) -e ".[dev,cluster]"
	$(BIN)/python -c "from adaspec.backends.llama_cpp import require_batch_invariant_build as r; r()"
	touch $@

# The main job: fetch the default model pair and generate with it.
run: install
	$(BIN)/adaspec models pull
	$(BIN)/adaspec generate "$(PROMPT)" --chat

# The default pair behind an OpenAI-compatible API on http://127.0.0.1:8000/v1 (docs/serving.md).
serve: install
	$(BIN)/adaspec models pull
	$(BIN)/adaspec serve $(SERVE_ARGS)

# The whole check: lint, fast unit tests, then the real-model integration tests.
test: lint
	$(BIN)/python -m pytest -q
	$(BIN)/adaspec models pull
	$(BIN)/python -m pytest -q -m integration

# Unit tests only (tiny random models, no download).
test-fast: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
