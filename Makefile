# tradeops.remediation: the two commands are `make drill` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)
ENGINES ?= 20
PYTEST_ARGS ?=
# `make test` runs on every core, at most 4 (pytest-xdist), a file at a time per worker; the files that use Docker
# first (tests/conftest.py). PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ "$$n" -gt 4 ] && n=4; echo $$n)
PYTEST_PARALLEL = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)
# A per-checkout pytest temp dir: pytest prunes old dirs under the shared default
# (/tmp/pytest-of-$USER), which would delete the lab (and its halt flags) of another run.
PYTEST_BASE := --basetemp=$(abspath tests/output/tmp)

.PHONY: setup test unit integration sanity drill lint bench clean images molecule docs

setup:
	@scripts/setup.sh

## The Molecule drills' images (tradeops/base, tradeops/trading-host), rebuilt only when their inputs change.
images: setup
	@scripts/images.sh

## Every Molecule scenario (molecule test -s <scenario>) through pytest; also part of `make test`.
molecule: setup
	@mkdir -p tests/output
	$(BIN)/pytest $(PYTEST_BASE) $(PYTEST_ARGS) tests/molecule

## Run every test: unit, module, integration (real ansible-playbook against the lab), lint and sanity.
test: setup
	@mkdir -p tests/output; $(BIN)/pytest $(PYTEST_BASE) $(PYTEST_PARALLEL) --durations=25 \
	  --junitxml=tests/output/junit.xml $(PYTEST_ARGS) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; exit $$rc

unit: setup
	@mkdir -p tests/output
	$(BIN)/pytest $(PYTEST_BASE) $(PYTEST_ARGS) tests/unit

integration: setup
	@mkdir -p tests/output
	$(BIN)/pytest $(PYTEST_BASE) $(PYTEST_ARGS) tests/integration

sanity: setup
	@mkdir -p tests/output
	$(BIN)/pytest $(PYTEST_BASE) $(PYTEST_ARGS) tests/sanity

## The main job: a P0 drill against a 20-engine lab, with its report.
drill: setup
	$(BIN)/tradeops drill p0 --engines $(ENGINES)

## Write the backends' doc fragments (plugins/doc_fragments) into the modules' DOCUMENTATION, where they take
## the options inside lists; tests/unit/plugins/test_doc_fragments.py fails while a copy is stale.
docs: setup
	$(BIN)/python scripts/docs.py

lint: setup
	$(BIN)/ruff check src tests bench plugins scripts
	$(BIN)/ansible-lint

## Benchmarks (issue 8): writes bench/results/<date>.json and .md, then README's Benchmarks section;
## ~30 min on 2 cores. A shorter run: make bench BENCH_ARGS="--only halt --engines 20 --runs 1".
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	-$(BIN)/tradeops lab down 2>/dev/null
	rm -rf .lab .lab-drill .lab-drill-auto reports runs tests/output .pytest_cache .ruff_cache
