# wsgiscale: the single entry point. `make run` serves the example app; `make test` installs
# what the tests need (a Python virtualenv, helm) and runs every test.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
BIN := target/release/wsgiscale
PORT ?= 8000
ADMIN_PORT ?= 9191

.PHONY: all build run test test-rust test-chart venv lint fmt generate bench e2e fuzz clean

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

test: venv lint test-rust test-chart

test-rust: venv
	$(CARGO) test --workspace --all-targets

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

# Cluster tests (#[ignore]d in `make test`): need KUBECONFIG pointing at kind or a real cluster.
e2e: build
	$(CARGO) test --workspace -- --ignored

bench: build
	bash bench/setup.sh
	bench/.venv/bin/python bench/run.py $(BENCH_ARGS)

# Fuzzes the master <-> worker frame decoder (needs the nightly toolchain and cargo-fuzz).
fuzz:
	cd sidecar/fuzz && cargo +nightly fuzz run frames -- -max_total_time=$${FUZZ_SECONDS:-60}

clean:
	$(CARGO) clean
	rm -rf $(VENV) .cache
