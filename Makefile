# Set-up and checks. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Write a Python function that reverses a linked list.

.PHONY: install run test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The main job: fetch the default model pair and generate with it.
run: install
	$(BIN)/adaspec models pull
	$(BIN)/adaspec generate "$(PROMPT)" --chat

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
