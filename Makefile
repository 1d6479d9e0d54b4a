# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all venv clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs the package (editable) with the test extras; re-runs when pyproject changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/resnetlab train --config recipes/demo-digits.yaml --out runs/demo-digits --overwrite
	@echo "report: $(CURDIR)/runs/demo-digits/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cpu.py
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
