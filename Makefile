# One command to set up and run the demo, one to set up and run the tests (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Ray >= 2.59 turns token auth on for local clusters; local runs and tests keep it off.
export RAY_AUTH_MODE ?= disabled

.PHONY: setup demo test bench clean peers mnist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, so the CUDA build (several GB) is not pulled by the dependency.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[cpu,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The demo's pool: 1M rows, 10 nearly separable planted classes (DEMO_ROWS=100000 for a quick look).
DEMO_ROWS ?= 1000000
DEMO_POOL ?= data/demo-1m.arrow
DEMO_SEED ?= 0
DEMO_ROUNDS ?= 3

data/mnist-train.arrow: | $(STAMP)
	$(BIN)/alscale pool mnist $@

data/mnist-test.arrow: | $(STAMP)
	$(BIN)/alscale pool mnist $@ --split test

# The MNIST pools of the active-learning protocols (jobs/mnist_*.yaml).
mnist: data/mnist-train.arrow data/mnist-test.arrow

# Train on 20 labels, acquire 40 rows 3 times with BADGE and with random on a local Ray,
# label, retrain; prints both test accuracies and the report's path (~3 min on 2 cores).
demo: $(STAMP)
	$(BIN)/python -m alscale.workflow.demo jobs/demo.yaml --rows $(DEMO_ROWS) --pool $(DEMO_POOL) \
	    --test data/demo-test.arrow --seed $(DEMO_SEED) --rounds $(DEMO_ROUNDS) --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf out data .pytest_cache

# Peers for side-by-side benchmarks, in their own virtualenv (never in .venv). Some of
# them pull torchvision, which brings a CUDA torch build: several GB.
.venv-peers/.stamp:
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install -q --upgrade pip
	.venv-peers/bin/python -m pip install -q torch==2.13.0
	.venv-peers/bin/python -m pip install -q baal batchbald-redux modAL-python scikit-activeml small-text decile-distil pyarrow psutil
	touch $@

peers: .venv-peers/.stamp
