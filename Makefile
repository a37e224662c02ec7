# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tav-installed

.PHONY: demo test test-isa lint bench clean-venv locked-install lock

# The install follows the pinned lock in requirements/ (what a resolving `pip install -e .[dev]` chose on our
# machines): torch with its CUDA libraries in one pip process, everything else in another at once (unpacking 6 GB of
# wheels is one core's work per process), each then compiling its modules to bytecode on every core (pip would do
# it on one). `pip check` then holds the result against setup.py; where the lock does not install or does not match
# (another Python or platform, an edited setup.py), a normal resolving install follows. tav's own modules are compiled
# too (each demo process saves ~0.7 s where PYTHONDONTWRITEBYTECODE is set). Modules that do not compile
# on this Python (torch ships Python 3.12 test fixtures) are skipped, as pip skips them. `make lock` renews the lock.
PIP_LOCKED := $(PY) -m pip install -q --no-compile --no-deps
PURELIB = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
COMPILE := $(PY) -m compileall -qq -j 0
LOCK := requirements/lock-torch.txt requirements/lock-rest.txt
TORCH_PINS := '^(torch|triton|nvidia-[a-z0-9-]*|cuda-[a-z-]*)=='  # what lock-torch.txt holds

$(STAMP): setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[install] the pinned lock (requirements/lock-torch.txt | lock-rest.txt, two pip processes at once)"
	@$(MAKE) --no-print-directory locked-install || ( echo "[install] the lock did not install here: resolving" \
	  "setup.py's requirements instead" && $(PY) -m pip install -q --no-compile -e '.[dev]' && \
	  ($(COMPILE) "$(PURELIB)" >/dev/null || true) )
	touch $(STAMP)

locked-install:
	@( $(PIP_LOCKED) -r requirements/lock-torch.txt && \
	  ($(COMPILE) "$(PURELIB)/torch" "$(PURELIB)/triton" >/dev/null || true) ) & torch=$$!; \
	$(PIP_LOCKED) -r requirements/lock-rest.txt && \
	  ($(COMPILE) -x '/site-packages/(torch|triton|nvidia)/' "$(PURELIB)" tav scripts tools >/dev/null || true); \
	  rest=$$?; \
	wait $$torch && test $$rest = 0
	@$(PIP_LOCKED) -e .
	@$(PY) -m pip check -q

lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q --no-compile -e '.[dev]'
	.venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^pip==' > .venv-lock/all.txt
	grep -E $(TORCH_PINS) .venv-lock/all.txt > requirements/lock-torch.txt
	grep -v -E $(TORCH_PINS) .venv-lock/all.txt > requirements/lock-rest.txt
	rm -rf .venv-lock

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
