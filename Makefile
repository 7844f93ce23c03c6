# hitlflow: `make demo` runs a workflow through pause and resume on the embedded stack;
# `make test` runs the whole test suite. Both build their own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench fuzz clean npm-tools browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# The AsyncAPI parser (npm) that validates `hitlflow contract --format asyncapi` in the tests;
# without npm the test that needs it is skipped and says why.
NPM_TOOLS := .npm-tools
NPM_STAMP := $(NPM_TOOLS)/.installed

$(NPM_STAMP): tests/asyncapi/package.json
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p $(NPM_TOOLS) && cp tests/asyncapi/package.json $(NPM_TOOLS)/ && \
		npm install --silent --no-audit --no-fund --prefix $(NPM_TOOLS) && touch $(NPM_STAMP); \
	else echo "npm not found: the AsyncAPI validation test will be skipped"; fi

npm-tools: $(NPM_STAMP)

# Debian's Chromium for the web pages' tests (Playwright drives it); where it cannot be
# installed (no apt-get, not root) those tests are skipped and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			(apt-get install -y -qq chromium >/dev/null 2>&1 || \
			 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
			echo "chromium could not be installed: the browser tests will be skipped"; \
		else echo "no chromium and no apt-get as root: the browser tests will be skipped"; fi; }

# Four pytest workers on two cores: most tests wait on NATS, the stores and the processes
# they start, not on the CPU (with two workers the suite kept about 1.1 cores busy).
test: $(STAMP) npm-tools browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 4 --dist loadfile $(PYTEST_ARGS)

# `make fuzz`: the edge fuzzing of `make test`, much longer (FUZZ_EXAMPLES per property).
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	HITLFLOW_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=0 \
		--hypothesis-show-statistics tests/fuzz

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# `make bench`: hitlflow against LangGraph, same machine, one run (bench/README.md).
# Its own venv with the `bench` extras; BENCH_ARGS="--paused 20000" etc. passes options.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(NPM_TOOLS) .pytest_cache .mypy_cache .ruff_cache
