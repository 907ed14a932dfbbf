# Fresh machine: `make demo` runs the embedded demo, `make test` the test suite. Both install what they need
# into .venv on first use (torch first — the 2.13.0 build, which is the CPU one where no CUDA torch exists —
# then dreamcore itself) and skip the install on later runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dreamcore-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-slow test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	@$(BIN)/python -m pip install -q -e ".[test,diffusers]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dreamcore demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
