# Two entry points: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv if missing and install qclip with its dependencies (`make test` adds the test extras);
# both are idempotent. Installs go through uv (from PyPI): the same releases as pip, resolved from pip's own
# index settings (tools/uv_flags.py), in ~25 s where pip took ~110 s on a 2-core machine;
# `make demo INSTALLER=pip` installs with pip alone, and pip takes over wherever uv cannot be installed or fails.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qclip-installed
TEST_STAMP := $(VENV)/.qclip-test-installed
# torch/torchvision pins: the releases this machine family has on disk (CUDA build; runs on CPU too).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
OUT ?= runs/demo
INSTALLER ?= uv
# `$(call pip_install,ARGS)`: uv when INSTALLER=uv and it installs, else pip
pip_install = { test "$(INSTALLER)" = uv && $(PY) -m pip install -q uv && \
	$(VENV)/bin/uv pip install -q --python $(PY) $$($(PY) tools/uv_flags.py) $(1); } || \
	{ $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q $(1); }

.PHONY: demo test install clean

install: $(STAMP)

# `make demo` needs the package and its dependencies only; `make test` adds the test extras (pytest, pytest-xdist,
# hypothesis, datasets, huggingface-hub, wandb): install time the demo does not need
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call pip_install,$(TORCH_PINS) -e .)
	$(compile_bytecode)
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(call pip_install,-e '.[test]')
	$(compile_bytecode)
	touch $(TEST_STAMP)

# Bytecode for everything installed, once: uv installs none, and where PYTHONDONTWRITEBYTECODE is set (as on
# many CI and sandbox images) no process ever caches any, so each one recompiled torch, torchvision and open_clip
# on import: ~13 s per `qclip` process instead of ~5 s (benchmarks/cli_latency.py). ~25 s on 2 cores.
compile_bytecode = $(PY) -m compileall -q -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") src >/dev/null || true

demo: install
	$(VENV)/bin/qclip run --config configs/demo.yaml --out $(OUT)

# one pytest worker per core (pytest-xdist), each test at one torch thread: the suite is mostly process starts and
# tiny trainings, so two workers on two cores take ~2/3 of the serial time without oversubscribing them
test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --durations=15 tests

clean:
	rm -rf $(VENV) runs build src/*.egg-info
