# make demo: set up, then train bf16 / jetfire_int8 / fp8_current /
# coat_fp8 with FP8 optimizer states side by side.
# make test: set up, then lint and run the tests (what CI runs).

PYTHON ?= $(shell command -v python3.12 || command -v python3 || command -v python)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
DEMO_OUT ?= train/results/demo
DEMO_STEPS ?= 300

.PHONY: setup lint test demo clean

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
	$(PY) -m pytest --doctest-modules lowprec_jax pallas_kernels tests

demo: setup
	$(PY) -m train --recipe bf16,jetfire_int8,fp8_current,coat_fp8+adamw_fp8 \
	  --steps $(DEMO_STEPS) \
	  --out $(DEMO_OUT) --fresh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
