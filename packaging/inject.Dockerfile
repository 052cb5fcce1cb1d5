# syntax=docker/dockerfile:1
#
# The image the operator's init container runs when a WsgiApp sets spec.inject: it copies
# /wsgiscale (the package for every supported CPython of the image's architecture, one
# extension per ABI tag, and the static start command) into the pod's emptyDir. Or, where the
# cluster has image volumes, it is mounted as one and never runs. Built from the repository
# root with the wheels of `make wheel` (or the release's, for every architecture):
#
#   docker build -f packaging/inject.Dockerfile --build-context wheels=dist \
#     -t ghcr.io/wsgiscale/wsgiscale-inject:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 ...   # dist/ with both architectures
#
# `make inject-package` does the same steps outside Docker, for this machine's architecture.

ARG RUST_VERSION=1.95.0
ARG PYTHON_VERSION=3.12

FROM scratch AS wheels

# The static start command, cross-compiled for the image's platform.
FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-slim-bookworm AS start
ARG RUST_VERSION
ARG BUILDARCH
ARG TARGETARCH
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# hadolint ignore=DL3008
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-gnu > /rust-target; gcc="gcc-x86-64-linux-gnu" ;; \
      arm64) echo aarch64-unknown-linux-gnu > /rust-target; gcc="gcc-aarch64-linux-gnu" ;; \
      *) echo "unsupported platform: linux/$TARGETARCH" >&2; exit 1 ;; \
    esac \
 && if [ "$BUILDARCH" != "$TARGETARCH" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends "$gcc" "libc6-dev-$TARGETARCH-cross" \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wsgiscale-start --target "$(cat /rust-target)" \
 && install -m 0755 "target/$(cat /rust-target)/release/wsgiscale-start" /wsgiscale-start

# One folder from the wheels of the image's architecture (only files are moved: it runs on
# the build machine's platform).
FROM --platform=$BUILDPLATFORM python:${PYTHON_VERSION}-slim-bookworm AS package
ARG TARGETARCH
COPY Cargo.toml /Cargo.toml
COPY packaging/wheels.py /packaging/wheels.py
COPY --from=start /wsgiscale-start /wsgiscale-start
RUN --mount=type=bind,from=wheels,target=/wheels \
    arch="$(case "$TARGETARCH" in amd64) echo x86_64 ;; arm64) echo aarch64 ;; *) echo "$TARGETARCH" ;; esac)" \
 && python /packaging/wheels.py unpack --out /wsgiscale --arch "$arch" --start /wsgiscale-start /wheels/wsgiscale-*.whl

FROM busybox:1.37
COPY --from=package /wsgiscale /wsgiscale
USER 65532:65532
ENTRYPOINT ["cp", "-a", "/wsgiscale/.", "/target/"]
