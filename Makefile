# The two commands of the README:
#   make demo   train on the embedded default, then serve it and show a spam and a ham verdict
#   make test   install everything and run the test suite
# Everything installs into .venv; torch is pinned first so the CPU build on local disk is used.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DS_BUILD_OPS ?= 0
export DS_ACCELERATOR ?= cpu

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,deepspeed,eval,dev]'
	touch $@

demo: setup
	$(BIN)/accelerate launch --config_file configs/accelerate/cpu.yaml training/train.py --output_dir runs/default
	$(BIN)/python scripts/demo.py --model runs/default

test: setup
	$(BIN)/ruff check .
	scripts/ensure-postfix.sh
	scripts/ensure-peers.sh
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
