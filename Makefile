# The two set-up commands of README.md. Each creates .venv on first use and installs Loom into it.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
# torch is pinned for CPU/dev installs: any other spec pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test install clean

$(BIN)/.loom-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.loom-installed

demo: install
	$(BIN)/loom demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) loom-work .pytest_cache
