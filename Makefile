# Skyport: `make demo` runs everything in one process with a simulated night (nothing to install but Python),
# `make run` runs the services against local RabbitMQ and PostgreSQL, `make test` runs the checks.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# Services to run with `make run` (default: every service in this repository).
SERVICES ?=
# Options of `make demo`, e.g. DEMO_ARGS="--fresh --rate 1 --size 10MB" (python -m services.demo --help).
DEMO_ARGS ?=

.PHONY: install services browser demo run simulate migrate test unit lint format schemas bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock libs/skyport/pyproject.toml
	$(UV) sync --frozen --all-packages
	touch $@

install: $(VENV)/.installed  ## create .venv with Skyport and its tools, from the lock file

services:  ## make sure RabbitMQ and PostgreSQL run on localhost
	deploy/dev/ensure-services

browser:  ## Debian's chromium for the browser tests (installed with apt-get when missing)
	deploy/dev/ensure-chromium

demo: install  ## the whole flow in one process (in-process bus, embedded PostgreSQL), a simulated night, the observer page
	$(BIN)/python -m services.demo $(DEMO_ARGS)

migrate: install services  ## apply pending database migrations
	$(BIN)/skyport migrate $(SERVICES)

run: install services  ## every service in one process on local RabbitMQ and PostgreSQL
	SERVICES="$(SERVICES)" deploy/dev/run-local

simulate: install  ## write a simulated night into var/observatory (for `make run`), one 2 MB file every 2 s
	$(BIN)/skyport simulate --root var/observatory --rate 0.5 --size 2MB

test: install services browser lint  ## lint, then every test tier (unit, integration, e2e, browser) on the real servers
	$(BIN)/pytest --durations=25

unit: install  ## the fast tier only: no servers needed
	$(BIN)/pytest tests/unit

lint: install  ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schemas: install  ## export the event JSON Schemas into schemas/v1, and the bus topology into deploy/rabbitmq
	$(BIN)/skyport schemas --out schemas/v1
	$(BIN)/skyport topology --bus-url amqp://skyport:skyport@rabbitmq:5672/ --out deploy/rabbitmq/definitions.json

bench: install services  ## benchmarks that print figures (not tests)
	$(BIN)/python bench/bus.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/catalog.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/notifier.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
