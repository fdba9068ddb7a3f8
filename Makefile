# Set-up and the two everyday commands.  `make demo` / `make test` build .venv on first use.
# TORCH_SPEC pins the CPU wheel available on this kind of machine; override it for GPUs, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all bench-quick clean

$(BIN)/cropi: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/cropi

demo: $(BIN)/cropi
	$(BIN)/cropi demo

test: $(BIN)/cropi
	$(BIN)/python -m pytest -q

test-all: $(BIN)/cropi
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The influence-engine benchmarks at reduced size (tiny model), written under runs/bench-quick/ (never over
# lab/results/); the full runs are `python -m lab.bench projection`, `fidelity`, `exact`.
bench-quick: $(BIN)/cropi
	OMP_NUM_THREADS=1 $(BIN)/python -m lab.bench projection --quick
	OMP_NUM_THREADS=1 $(BIN)/python -m lab.bench fidelity --quick
	OMP_NUM_THREADS=1 $(BIN)/python -m lab.bench exact --quick --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache
