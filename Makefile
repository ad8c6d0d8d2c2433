# make demo: set up, then train bf16 / jetfire_int8 / fp8_current /
# coat_fp8 with FP8 optimizer states side by side.
# make test: set up, then lint and run the tests (what CI runs).

PYTHON ?= $(shell command -v python3.12 || command -v python3 || command -v python)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
DEMO_OUT ?= train/results/demo
DEMO_STEPS ?= 300
# Test processes (pytest-xdist; each test file runs whole in one of them).
# Compiling dominates the suite and is single-threaded, so CI's 2 cores run
# 2 workers.
TEST_WORKERS ?= 2

# The offline-compile tier (no GPU; a separate venv with the CUDA plugin and
# ptxas, about 1.5 GB): make ptxas compiles every shipped Mosaic GPU kernel
# for sm_90a and checks registers, spills and shared memory
# (benchmarks/ptxas.py); make traffic compiles one Linear's fwd+bwd per
# recipe for an H200 and checks its HBM ledger (benchmarks/traffic.py).
GPUC := .venv-gpuc
GPUC_STAMP := $(GPUC)/.installed-jax-0.11.2
GPUC_BIN = $(wildcard $(GPUC)/lib/python3*/site-packages/nvidia/cu13/bin)
FAKECUDA := build/fakecuda/libcuda.so.1
OFFLINE_OUT ?= build/offline

.PHONY: setup lint test demo ptxas traffic clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || \
	  { echo "lowprec_jax needs Python 3.12 (jax 0.11.2); found $$($(PYTHON) --version) at $(PYTHON). Set PYTHON=/path/to/python3.12."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile \
	  --doctest-modules lowprec_jax pallas_kernels tests

demo: setup
	$(PY) -m train --recipe bf16,jetfire_int8,fp8_current,coat_fp8+adamw_fp8 \
	  --steps $(DEMO_STEPS) \
	  --out $(DEMO_OUT) --fresh

$(GPUC_STAMP):
	test -x $(GPUC)/bin/python || $(PYTHON) -m venv $(GPUC)
	$(GPUC)/bin/pip install --quiet --disable-pip-version-check jax==0.11.2 \
	  jaxlib==0.11.2 jax-cuda13-plugin==0.11.2 jax-cuda13-pjrt==0.11.2 \
	  nvidia-cuda-nvcc nvidia-cuda-nvdisasm flax==0.12.12 optax==0.2.8
	touch $(GPUC_STAMP)

$(FAKECUDA): benchmarks/offline/fakecuda.c
	mkdir -p $(dir $@) && gcc -shared -fPIC -o $@ $<

ptxas: setup $(GPUC_STAMP)
	$(PY) -m benchmarks.ptxas --venv $(GPUC) --check --out $(OFFLINE_OUT)

traffic: $(GPUC_STAMP) $(FAKECUDA)
	JAX_PLATFORMS=cpu PYTHONPATH=. LD_LIBRARY_PATH=$(abspath $(dir $(FAKECUDA))) \
	  PATH=$(abspath $(GPUC_BIN)):$$PATH \
	  $(GPUC)/bin/python -m benchmarks.traffic --check --out $(OFFLINE_OUT)

clean:
	rm -rf $(VENV) $(GPUC) .pytest_cache .ruff_cache *.egg-info
