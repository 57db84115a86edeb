# `make smoke` sets everything up and runs the pipeline on small random networks; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; on a CUDA machine use e.g. `make install TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
TORCH ?= torch==2.13.0

.PHONY: install smoke test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

smoke: install
	$(PY) -m exfacegan.run experiment=smoke

test: install
	$(PY) -m pytest -q
