# The two set-up commands of README.md. Each creates .venv on first use and installs Loom into it.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
# torch is pinned for CPU/dev installs: any other spec pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test install clean constraints

# constraints.txt pins every other package to the versions Loom is tested with (the Dockerfile uses it too).
$(BIN)/.loom-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/.loom-installed

demo: install
	$(BIN)/loom demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# after changing pyproject.toml's dependencies: install unpinned, then pin what got installed
constraints: install
	$(BIN)/python -m pip install --quiet --upgrade -e ".[dev,aws,bench]"
	{ sed -n '1,/^#   make constraints/p' constraints.txt; \
	  $(BIN)/python -m pip freeze | grep -v -e '^-e' -e '^loom' -e '^torch==' -e '^nvidia-' -e '^triton==' -e '@ file'; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) loom-work .pytest_cache
