# syntax=docker/dockerfile:1
#
# The image the operator's init container runs when a WsgiApp sets spec.inject: it copies
# /wsgiscale (the package for every supported CPython, one extension per ABI tag, and the static
# start command) into the pod's emptyDir. Or, where the cluster has image volumes, it is
# mounted as one and never runs. Built from the repository root with make wheel's output:
#
#   docker build -f packaging/inject.Dockerfile --build-context wheels=dist \
#     -t ghcr.io/wsgiscale/wsgiscale-inject:0.1.0 .

ARG RUST_VERSION=1.95.0
ARG PYTHON_VERSION=3.12

FROM scratch AS wheels

# The static start command.
FROM rust:${RUST_VERSION}-slim-bookworm AS start
ARG RUST_VERSION
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wsgiscale-start --target x86_64-unknown-linux-gnu \
 && install -m 0755 target/x86_64-unknown-linux-gnu/release/wsgiscale-start /wsgiscale-start

# One folder from all the wheels (make inject-package does the same outside Docker).
FROM python:${PYTHON_VERSION}-slim-bookworm AS package
COPY Cargo.toml /Cargo.toml
COPY packaging/wheels.py /packaging/wheels.py
COPY --from=start /wsgiscale-start /wsgiscale-start
RUN --mount=type=bind,from=wheels,target=/wheels \
    python /packaging/wheels.py unpack --out /wsgiscale --start /wsgiscale-start /wheels/wsgiscale-*.whl

FROM busybox:1.37
COPY --from=package /wsgiscale /wsgiscale
USER 65532:65532
ENTRYPOINT ["cp", "-a", "/wsgiscale/.", "/target/"]
