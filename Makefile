# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
SHELL := bash
.SHELLFLAGS := -o pipefail -c
QUIET_PIP := { grep -v '^WARNING: Location' || true; }
VENV := .venv
BIN := $(VENV)/bin
# The torch build that this project is tested with; pip takes it from local disk where it lies there.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PIN) 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import torch, torchvision, kd, sweep; print('installed torch', torch.__version__)"
	touch $@

demo: venv
	$(BIN)/kdsweep train --method teacher --out runs/demo/teacher
	$(BIN)/kdsweep train --method kd --alpha 0.5 --temperature 4 --teacher runs/demo/teacher --out runs/demo/kd-a0.5-T4

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
