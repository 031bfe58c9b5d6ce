# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
SHELL := bash
.SHELLFLAGS := -o pipefail -c
QUIET_PIP := { grep -v '^WARNING: Location' || true; }
VENV := .venv
BIN := $(VENV)/bin
# The torch build that this project is tested with; pip takes it from local disk where it lies there.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench venv clean image ch-image gpu-carry

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

# As root, the SLURM tests run against a real one-node cluster (slurm/testcluster) started here, and
# the container tests against the project's image, built here (tests/container).
test: venv
	slurm/testcluster/with-cluster.sh tests/container/with-image.sh $(BIN)/python -m pytest -q

# The project's image (Dockerfile), with podman or docker. BASE_IMAGE: any image with python and torch
# (default: the Dockerfile's PyTorch image); the image records the commit it was built from.
IMAGE ?= kd-sweep:latest
BASE_IMAGE ?=
ENGINE ?= $(shell command -v podman || command -v docker || echo podman)
IMAGE_BUILD_FLAGS ?=
image:
	$(ENGINE) build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  --build-arg KDSWEEP_COMMIT=$$(git describe --always --dirty --abbrev=40 2>/dev/null || echo unknown) \
	  $(IMAGE_BUILD_FLAGS) -t $(IMAGE) .

# The image as a directory for Charliecloud's ch-run (CH_IMAGE=/path/dir): exported with podman or
# docker, much faster than ch-convert, with the image's ENV written where `ch-run --set-env` reads it.
CH_IMAGE ?= kd-sweep.ch
ch-image:
	rm -rf $(CH_IMAGE).tmp && mkdir -p $(CH_IMAGE).tmp/ch
	c=$$($(ENGINE) create $(IMAGE)) && $(ENGINE) export $$c | tar -x -C $(CH_IMAGE).tmp; s=$$?; $(ENGINE) rm $$c >/dev/null; exit $$s
	$(ENGINE) image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' $(IMAGE) > $(CH_IMAGE).tmp/ch/environment
	rm -rf $(CH_IMAGE) && mv $(CH_IMAGE).tmp $(CH_IMAGE)

bench: venv
	$(BIN)/python bench/plan_collect.py

# What bench/gpu_session.sh needs on a lent GPU machine that has torch but no network: the
# pure-Python wheels kd-sweep uses that its image lacks (per the workplace's KINDS.md, 2026-11:
# mlxtend and submitit; torch, torchvision, numpy, pandas, pyarrow, tqdm, cloudpickle are there), and
# Fashion-MNIST (Debian's dataset-fashion-mnist, as IDX files under gpu-carry/data/FashionMNIST/raw).
gpu-carry: venv
	rm -rf gpu-carry && mkdir -p gpu-carry/wheels gpu-carry/data/FashionMNIST/raw
	$(BIN)/pip download -q --no-deps -d gpu-carry/wheels mlxtend submitit py-spy
	cd gpu-carry && apt-get download -q dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb deb
	cp gpu-carry/deb/usr/share/datasets/fashion-mnist/* gpu-carry/data/FashionMNIST/raw/
	rm -rf gpu-carry/deb gpu-carry/*.deb && du -sh gpu-carry

clean:
	rm -rf $(VENV) runs results/demo
