# onnxgate: the two commands are `make serve` and `make test`; everything else supports them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: install install-test serve test check lint typecheck proto bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed         ## create .venv and install onnxgate (leaves .venv/bin/onnxgate)

install-test: $(VENV)/.installed-test

serve: install                       ## run the gateway on the demo repository
	$(BIN)/onnxgate serve $(ARGS)

test: install-test                   ## run the whole test suite (two processes: see tests/own_proto/README.md)
	$(BIN)/python -m pytest tests --ignore=tests/own_proto $(PYTEST_ARGS)
	$(BIN)/python -m pytest tests/own_proto $(PYTEST_ARGS)

check: install-test lint typecheck   ## lint, types, and generated code up to date
	$(BIN)/python scripts/gen_proto.py --check

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

proto: install-test                  ## regenerate gateway/grpc/generated from proto/
	$(BIN)/python scripts/gen_proto.py

bench: install-test                  ## run the benchmark scenarios side by side
	$(BIN)/onnxgate bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
