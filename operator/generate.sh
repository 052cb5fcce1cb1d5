#!/usr/bin/env bash
# Regenerates the files derived from the operator's Rust types:
#   crds/wsgiapp.yaml                       the WsgiApp CustomResourceDefinition
#   charts/wsgiscale/templates/crds.yaml    the same CRD as the Helm chart installs it
# `cargo test -p wsgiscale-operator` fails when they are out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p wsgiscale-operator --bin wsgiscale-operator
bin="${CARGO_TARGET_DIR:-target}/debug/wsgiscale-operator"
mkdir -p crds charts/wsgiscale/templates
"$bin" crd > crds/wsgiapp.yaml
"$bin" crd --helm-template > charts/wsgiscale/templates/crds.yaml
echo "generated crds/wsgiapp.yaml and charts/wsgiscale/templates/crds.yaml"
