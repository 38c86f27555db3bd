# The README's commands. `make run` and `make test` do all the set-up a fresh
# machine needs: a virtualenv, the Python dependencies, the Rust extension
# (release build) and, for tests, a private redis-server.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
EXT_STAMP := $(VENV)/.extension

.PHONY: run test bench lint clean install build

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.7,<2"
	touch $@

# maturin installs the package (editable), its dependencies and the dev extras.
$(EXT_STAMP): $(STAMP) Cargo.toml core_rs/Cargo.toml $(shell find core_rs/src -name '*.rs')
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
		$(VENV)/bin/maturin develop --release --extras dev
	touch $@

install: $(STAMP)
build: $(EXT_STAMP)

run: build
	$(VENV)/bin/model-router serve

test: build
	scripts/with-private-redis.sh bash -c 'cargo test --quiet && $(VENV)/bin/pytest -q'

# Engine micro-benchmarks (pytest-benchmark), then the load test: the router
# (2 workers) in front of the mock provider, against the mock alone, with wrk.
bench: build
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(VENV)/bin/pytest -q -s bench --benchmark-only --benchmark-columns=min,median,mean,max,rounds
	$(VENV)/bin/python bench/load.py --seconds 10

lint: build
	cargo fmt --check
	cargo clippy --quiet --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check router_py tests bench
	$(VENV)/bin/ruff format --check router_py tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) target data
