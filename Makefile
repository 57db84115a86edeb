# `make smoke` sets everything up and runs the pipeline on small random networks; `make test` runs the tests
# (`make test-quick`: all but those marked slow).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; on a CUDA machine use e.g. `make install TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
TORCH ?= torch==2.13.0
# Test processes (pytest-xdist; one test file per process at a time, so module fixtures are built once).
TEST_WORKERS ?= 2

.PHONY: install smoke test test-quick

# facenet-pytorch only carries the MTCNN weights, which the aligner reads as data files without importing its code;
# its requirements (torchvision, an older torch) would replace the PyTorch installed here, hence --no-deps.
$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0
	touch $@

install: $(VENV)/.installed

smoke: install
	$(PY) -m exfacegan.run experiment=smoke

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-quick: install
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile
