# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
SHELL := bash
.SHELLFLAGS := -o pipefail -c
QUIET_PIP := { grep -v '^WARNING: Location' || true; }
VENV := .venv
BIN := $(VENV)/bin
# The torch build that this project is tested with; pip takes it from local disk where it lies there.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PIN) 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import torch, torchvision, kd, sweep; print('installed torch', torch.__version__)"
	touch $@

# The demo sweep (sweep/examples/demo.toml) end to end: plan, run, collect, plot, report.
demo: venv
	$(BIN)/kdsweep plan demo
	$(BIN)/kdsweep run demo
	$(BIN)/kdsweep collect demo
	$(BIN)/kdsweep plot demo
	$(BIN)/kdsweep report demo
	@echo; echo "table: results/demo/results.parquet, epochs.parquet   plots: results/demo/plots/   report: results/demo/report.html"

# As root, the SLURM tests run against a real one-node cluster (slurm/testcluster) started here.
test: venv
	slurm/testcluster/with-cluster.sh $(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/plan_collect.py

clean:
	rm -rf $(VENV) runs results/demo
