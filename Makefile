# tuneloop developer targets. Every target that runs code sets up .venv itself.

SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)

VENV   := .venv
VPY    := $(VENV)/bin/python
VPIP   := $(VPY) -m pip
RUFF   := $(VENV)/bin/ruff
STAMP  := $(VENV)/.installed

PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help install test lint format bench demo clean

help:
	@echo "tuneloop make targets:"
	@echo "  make install   create .venv and install requirements + tuneloop (editable)"
	@echo "  make test      ruff check, then pytest (pass extra args with PYTEST_ARGS=...)"
	@echo "  make lint      ruff check and ruff format --check"
	@echo "  make format    ruff format and ruff check --fix"
	@echo "  make bench     run every benchmarks/*.py"
	@echo "  make demo      one fine-tuning round through Airflow on the local backend (not available yet)"
	@echo "  make clean     remove .venv and caches"
	@echo "Python used for .venv: $(PYTHON)  (override with PYTHON=...)"

# Re-installs only when a requirements file or pyproject.toml changes. torch is installed on its
# own before requirements-local.txt, so pip keeps the CPU build (see that file).
$(STAMP): requirements.txt requirements-dev.txt requirements-local.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "no python3.11, python3.12 or python3 found; set PYTHON=..." >&2; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPIP) install --upgrade pip
	$(VPIP) install -r requirements.txt -r requirements-dev.txt
	$(VPIP) install "$$(grep -E '^torch==' requirements-local.txt)"
	$(VPIP) install -r requirements-local.txt
	$(VPIP) install --no-deps -e .
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(RUFF) check .
	$(VPY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(RUFF) check .
	$(RUFF) format --check .

format: $(STAMP)
	$(RUFF) format .
	$(RUFF) check --fix .

bench: $(STAMP)
	@shopt -s nullglob; files=(benchmarks/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks yet"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(VPY) "$$f" || exit $$?; done

demo:
	@echo "make demo: not available yet. It needs the round DAG, which comes next; meanwhile" >&2
	@echo "the local backend runs single stages: see 'The local backend' in README.md, or" >&2
	@echo "check a campaign: tuneloop campaign validate recipes/campaigns/demo.yaml" >&2
	@exit 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -not -path './.git/*' -exec rm -rf {} +
