# vram-gateway developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.toml
PYTEST_ARGS ?=

.PHONY: venv serve test bench plan clean gpu-check gpu-payload gpu-validate-cpu

# One venv, installed with the extras a target needs (pyproject.toml's optional dependencies):
# .installed-demo is what serving needs (the project and the demo model's package), and
# .installed-test adds the test tools (pytest, schemathesis, Playwright, the deploy/ linters;
# CI's .ci/run runs `make test`). Each is redone only when pyproject.toml changes.
# llama-cpp-python compiles llama.cpp from source on first install (~9 minutes on 2 cores);
# pip caches the wheel afterwards.
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$*]'
	touch $@

SERVE_DEPS := $(VENV)/.installed-demo
TEST_DEPS := $(VENV)/.installed-test

venv: $(TEST_DEPS)

serve: $(SERVE_DEPS)
	$(VENV)/bin/gateway serve --config $(CONFIG)

test: $(TEST_DEPS)
	$(PY) -m pytest $(PYTEST_ARGS)

# llama-cpp-python's own server is the comparison in bench/serving_overhead.py; its [server] extras live
# in a separate venv so the project never depends on them.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet 'llama-cpp-python[server]==0.3.36'
	touch $@

bench: $(SERVE_DEPS) $(BENCH_VENV)/.installed
	$(PY) bench/analyze.py
	$(PY) bench/plan.py
	$(PY) bench/ondemand.py
	$(PY) bench/serving_overhead.py --bench-python $(BENCH_VENV)/bin/python
	$(PY) bench/concurrency.py --bench-python $(BENCH_VENV)/bin/python
	$(PY) bench/engine_parts.py
	$(PY) bench/load_gate.py
	$(PY) bench/keys.py
	$(PY) bench/router.py

GPU_CHECK_ARGS ?=
# The venv only where PY is the venv's: a GPU machine runs `make gpu-check PY=python3`.
PY_DEPS := $(if $(findstring $(VENV)/,$(PY)),$(SERVE_DEPS))
# On a CUDA machine with the CUDA build of llama-cpp-python: predicted vs measured GPU memory
# (docs/gpu-validation.md). Exits 2 off a GPU; the CPU part is bench/gpu_check.py --dry-run.
gpu-check: $(PY_DEPS)
	$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

# The one-call GPU validation: `make gpu-payload` here prepares .gpu/ (a trimmed llama-cpp-python
# sdist and the wheels a CUDA machine without network lacks); that machine then runs
# `bash bench/gpu/validate.sh` from the repo root (build, then every GPU check; docs/gpu-validation.md).
# `make gpu-validate-cpu` runs the same script's steps on this machine's CPU build.
gpu-payload:
	bash bench/gpu/prepare-payload.sh .gpu

gpu-validate-cpu: $(TEST_DEPS)
	GPU_BUILD=skip PY=$(PY) SHAPE=tiny CLIENTS=1,4 OUT=$(CURDIR)/gpu-out bash bench/gpu/validate.sh

plan: $(SERVE_DEPS)
	$(VENV)/bin/gateway plan --config $(CONFIG)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
