# The two commands: `make serve` and `make test`. Each installs what it needs first
# (a project venv in .venv via uv; quick when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lookalike-installed
UV := $(PYTHON) -m uv
SOURCES := Makefile pyproject.toml CMakeLists.txt $(shell find ext/include ext/third_party ext/binding.cpp ext/binding_hnsw.cpp proto -type f 2>/dev/null)
ARGS ?=

.PHONY: install serve test test-python test-cpp lint tools datasets browser bench clean

$(STAMP): $(SOURCES)
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	@test -x $(BIN)/python || $(UV) venv --quiet --python 3.11 $(VENV)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[test]"
	@touch $@

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/lookalike serve $(ARGS)

tools:
	scripts/install-tools.sh

datasets:
	scripts/install-datasets.sh

browser:
	scripts/install-browser.sh

lint: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	scripts/lint-proto.sh
	scripts/gen-go.sh --check

test-cpp:
	cmake -S ext -B build/ext-tests -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/ext-tests -j2
	ctest --test-dir build/ext-tests --output-on-failure

test-python: $(STAMP) tools datasets browser
	PATH="$(CURDIR)/.tools/bin:$$PATH" LOOKALIKE_DATASETS_DIR="$(CURDIR)/.datasets" $(BIN)/python -m pytest $(ARGS)

test: lint test-cpp test-python

bench: $(STAMP)
	@$(BIN)/python bench/harness.py --list

clean:
	rm -rf build .tools .datasets $(VENV)
