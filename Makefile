# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both create .venv when it is missing and (re)install when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# On machines that keep datasets beside the checkout (no downloads there), read them from it.
ifeq ($(RAYMIX_DATA_DIR),)
ifneq ($(wildcard ../shared/data/MNIST),)
export RAYMIX_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: run test demo bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,analysis,search]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/raymix sweep tune_configs/quick.yaml --storage-path results --overwrite --report

demo: $(STAMP)
	$(BIN)/raymix demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/aggregators.py

clean-venv:
	rm -rf $(VENV)
