# The two set-up commands of the README. Each creates .venv and installs what it needs on first use.
#   make demo          the main job
#   make test          the test suite, pinned world (constraints.txt)
#   make test-newest   the test suite, newest world: what `pip install` resolves inside pyproject's ranges today
#                      (.venv-newest; `make clean` drops it so the next run resolves again). CI runs both.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
NEWEST_VENV ?= .venv-newest
NEWEST_PY := $(NEWEST_VENV)/bin/python
# The libraries whose versions a test run prints first (the closing note and README quote them).
SHOW_VERSIONS = -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | grep -iE \
	'^(torch|transformers|accelerate|datasets|tokenizers|safetensors|huggingface.hub|evaluate|numpy|tensorflow.cpu|onnx|onnxruntime|gguf)==' \
	| tr '\n' ' '; echo

.PHONY: demo test test-newest install install-dev clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0  # pinned; which build pip gets (CPU or CUDA) depends on the index: see README, Install
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev,convert,export,lora,trl,lm-eval,serve]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/hf-scratch-gpt demo $(ARGS)

test: $(VENV)/.installed-dev
	@echo "pinned world:"; $(PY) $(SHOW_VERSIONS)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

# No constraints file; torch is still pinned (an unpinned one would move the tested torch too).
$(NEWEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(NEWEST_PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,convert,export,lora,trl,lm-eval,serve]" torch==2.13.0
	touch $@

test-newest: $(NEWEST_VENV)/.installed
	@echo "newest world:"; $(NEWEST_PY) $(SHOW_VERSIONS)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(NEWEST_PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) $(NEWEST_VENV) runs
