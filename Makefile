# Two commands for a fresh clone: `make run` and `make test`. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.npas-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# The main recipe; overrides go in ARGS, e.g. `make run ARGS="data=fashion_mnist"`.
RECIPE ?= $(if $(wildcard configs/recipe/npas_effnet.yaml),npas_effnet,baseline)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test install data lint clean-venv

run: install data
	$(BIN)/python train.py recipe=$(RECIPE) $(ARGS)

test: install data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# Reinstalls only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Debian's dataset-fashion-mnist when apt is there and the files are not; quiet elsewhere.
data:
	@if [ ! -f $(FASHION_MNIST) ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
	    || echo "note: dataset-fashion-mnist not installed (needs root); data=fashion_mnist will need data.download=true"; \
	fi

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
