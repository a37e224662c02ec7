# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tav-installed

.PHONY: demo test test-isa lint bench clean-venv

# pip compiles every installed module to bytecode on one core (about a minute here); compileall does the same on
# every core (about 20 s). Modules that do not compile on this Python (torch ships Python 3.12 test fixtures) are
# skipped silently, as pip skips them.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	$(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out results/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# The suite with oneDNN capped at AVX-512 (no AMX, no avx512_bf16 kernels): the other CPU kind's code paths.
test-isa: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX512_CORE $(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check tav scripts tools tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_data.py

clean-venv:
	rm -rf $(VENV)
