# The two commands of README: `make reproduce` (the whole workflow) and `make test`.
# Both create .venv if missing and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/ci.txt
CORES ?= all
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.mtlp-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup reproduce test lint format clean-results

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS) --editable '.[workflow,docs,dev]'
	touch $@

reproduce: setup
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow

clean-results:
	rm -rf results .snakemake/metadata
	find figures -type f ! -name README.md -delete
