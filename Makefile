# Two entry points: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv if missing and install qclip with its dependencies; both are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qclip-installed
# torch/torchvision pins: the releases this machine family has on disk (CUDA build; runs on CPU too).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
OUT ?= runs/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/qclip run --config configs/demo.yaml --out $(OUT)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs build src/*.egg-info
