# Set-up and the two everyday commands.  `make demo` / `make test` build .venv on first use.
# TORCH_SPEC pins the CPU wheel available on this kind of machine; elsewhere pick the wheel index, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all bench-quick clean

# the package alone: what the demo needs
$(VENV)/.cropi: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	touch $@

# the dev extra on top: pytest and the engines the tests run for real on a CPU (Ray, TRL, datasets)
$(VENV)/.dev: $(VENV)/.cropi
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.cropi
	$(BIN)/cropi demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The influence-engine benchmarks at reduced size (tiny model), written under runs/bench-quick/ (never over
# lab/results/); the full runs are `python -m lab.bench projection`, `fidelity`, `exact`.
bench-quick: $(VENV)/.dev
	OMP_NUM_THREADS=1 $(BIN)/python -m lab.bench projection --quick
	OMP_NUM_THREADS=1 $(BIN)/python -m lab.bench fidelity --quick
	OMP_NUM_THREADS=1 $(BIN)/python -m lab.bench exact --quick --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache
