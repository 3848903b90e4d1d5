# tuneloop developer targets. Every target that runs code sets up .venv itself.

SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)

VENV   := .venv
VPY    := $(VENV)/bin/python
VPIP   := $(VPY) -m pip
RUFF   := $(VENV)/bin/ruff
MYPY   := $(VENV)/bin/mypy
IMPORTS := $(VENV)/bin/lint-imports
STAMP  := $(VENV)/.installed

PYTEST_ARGS ?=
# Two test processes (tests/conftest.py keeps the end-to-end tests together in one); 0 runs the
# suite in this process only.
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help

.PHONY: help install system-packages test lint format bench demo airflow mwaa clean

help:
	@echo "tuneloop make targets:"
	@echo "  make install   create .venv and install requirements + tuneloop (editable)"
	@echo "  make test      ruff check, mypy and lint-imports, then pytest in PYTEST_WORKERS=2"
	@echo "                 processes (pass extra args with PYTEST_ARGS=...); installs Debian's"
	@echo "                 postgresql, redis-server and chromium when missing"
	@echo "  make lint      ruff check, ruff format --check, mypy (types) and lint-imports (layers,"
	@echo "                 no import cycles; contracts in pyproject.toml)"
	@echo "  make format    ruff format and ruff check --fix"
	@echo "  make bench     run every benchmarks/*.py (not the _helpers)"
	@echo "  make demo      the demo campaign through Airflow on the local backend (up to 3 rounds)"
	@echo "  make airflow   Airflow standalone on dags/ and plugins/ (UI on http://localhost:8080)"
	@echo "  make mwaa      build/mwaa/: plugins.zip, requirements.txt and startup.sh for Amazon MWAA"
	@echo "                 (Airflow 3.3.1); prints what to upload where (MWAA_BUCKET=s3://...)"
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

# Debian packages the end-to-end tests (tests/e2e/) run: PostgreSQL's server, Redis and Chromium.
# Installed only when a binary is missing (one apt-get update first); without root, the target
# stops with the command to run.
PG_SERVER := /usr/lib/postgresql/*/bin/postgres
system-packages:
	@missing=""; \
	ls $(PG_SERVER) >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/redis-server || command -v redis-server >/dev/null 2>&1 \
	  || missing="$$missing redis-server"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make test: the end-to-end tests need Debian packages that are missing; install them with: sudo apt-get update && sudo apt-get install -y$$missing" >&2; \
	  exit 1; \
	fi; \
	echo "installing Debian packages:$$missing"; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y$$missing

# Cheap checks first: a lint, type or layer error stops before any Debian package or test runs.
test: $(STAMP)
	$(RUFF) check .
	$(MYPY)
	$(IMPORTS)
	@$(MAKE) --no-print-directory system-packages
	$(VPY) -m pytest -n $(PYTEST_WORKERS) --durations=30 $(PYTEST_ARGS)

lint: $(STAMP)
	$(RUFF) check .
	$(RUFF) format --check .
	$(MYPY)
	$(IMPORTS)

format: $(STAMP)
	$(RUFF) format .
	$(RUFF) check --fix .

bench: $(STAMP)
	@shopt -s nullglob; files=(benchmarks/[!_]*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks yet"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(VPY) "$$f" || exit $$?; done

# The demo campaign (recipes/campaigns/demo.yaml) through Airflow's own scheduler on this machine
# (api-server, scheduler, dag-processor, triggerer; SQLite, LocalExecutor): up to 3 rounds, each
# triggered by the previous round's decision. State lives in .tuneloop/ (demo/ and airflow/); a
# second run continues the campaign. DEMO_ARGS: --fresh (start over), --rounds N,
# --keep-running (leave Airflow up; --stop stops it), --project-dir DIR.
demo: $(STAMP)
	$(VPY) -m tuneloop.demo $(DEMO_ARGS)

# Airflow standalone (scheduler, triggerer, dag-processor, API server and UI on
# http://localhost:$(AIRFLOW_PORT)) on this repo's dags/ and plugins/, with the demo's Airflow home
# and SQLite database ($(PROJECT_DIR)/.tuneloop/airflow), so the demo's runs are there. The login
# is admin; the password is kept in .tuneloop/airflow/simple_auth_manager_passwords.json.generated.
AIRFLOW_PORT ?= 8080
PROJECT_DIR ?= $(CURDIR)
airflow: $(STAMP)
	@$(VPY) -m tuneloop.demo --check-stopped --project-dir "$(PROJECT_DIR)"
	@mkdir -p "$(PROJECT_DIR)/.tuneloop/airflow"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	TUNELOOP_PROJECT_DIR="$(PROJECT_DIR)" \
	AIRFLOW_HOME="$(PROJECT_DIR)/.tuneloop/airflow" \
	AIRFLOW__CORE__DAGS_FOLDER="$(CURDIR)/dags" \
	AIRFLOW__CORE__PLUGINS_FOLDER="$(CURDIR)/plugins" \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__PARALLELISM=4 \
	AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$(AIRFLOW_PORT)/execution/" \
	$(VENV)/bin/airflow standalone

# Amazon MWAA: the plugins zip, the requirements on MWAA's constraints and the startup script,
# under build/mwaa/ (deploy/mwaa/build.py; standard library only, so no .venv is needed).
MWAA_BUCKET ?= s3://<your-mwaa-bucket>
mwaa:
	@test -n "$(PYTHON)" || { echo "no python3.11, python3.12 or python3 found; set PYTHON=..." >&2; exit 1; }
	$(PYTHON) deploy/mwaa/build.py --out build/mwaa --bucket "$(MWAA_BUCKET)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -not -path './.git/*' -exec rm -rf {} +
