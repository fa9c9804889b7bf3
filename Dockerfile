# syntax=docker/dockerfile:1
#
# escalator: one binary. The production image has `worker` (default) and
# `topology` only; the tooling (`sim`, `demo`, `bench`) is a cargo feature:
#
#   docker build -t escalator .                                   # production
#   docker build --build-arg CARGO_FEATURES=tooling -t escalator:tooling .
#   docker run --rm escalator --help
#
# The shipped binary is stripped; its debug info (line tables, for
# symbolising backtraces) is kept apart, in the `debug-symbols` stage:
#
#   docker build --target debug-symbols --output type=local,dest=./symbols .
#   # -> symbols/escalator.debug; the binary names it (.gnu_debuglink), so
#   #    gdb/addr2line find it with: --debug-file-directory ./symbols
#
# Build stage: the toolchain must be at least Cargo.toml's rust-version (1.88:
# edition 2024, let-chains). The image tag is an ARG so it can be raised
# without editing this file: --build-arg RUST_VERSION=1.90
ARG RUST_VERSION=1.88
# Cargo features on top of the production build (--no-default-features):
# empty for production, "tooling" for an image that also runs sim/demo/bench.
ARG CARGO_FEATURES=""

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG CARGO_FEATURES
WORKDIR /build

# Only what the build reads: the manifest and lock file, the sources, and the
# JSON schemas that src/schema.rs embeds with include_str!.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY schemas ./schemas

# --locked: build exactly the dependency versions of Cargo.lock (fails instead
# of silently resolving new ones). The cache mounts keep the registry and the
# target directory between builds (BuildKit); the binary is copied out of the
# cached target directory in the same step, since the mount is not part of
# the image. Then the debug info moves to escalator.debug (objcopy, from
# binutils in the rust image) and the binary keeps a link to it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --no-default-features \
      ${CARGO_FEATURES:+--features "$CARGO_FEATURES"} --bin escalator \
 && install -D -m 0755 target/release/escalator /out/escalator \
 && cd /out \
 && objcopy --only-keep-debug escalator escalator.debug \
 && objcopy --strip-all --add-gnu-debuglink=escalator.debug escalator \
 && ls -l /out

# The debug info alone, for `--target debug-symbols --output ...` (above).
FROM scratch AS debug-symbols
COPY --from=builder /out/escalator.debug /escalator.debug

# Runtime stage: same Debian release as the builder (glibc), nothing but the
# binary and the CA bundle (rustls verifies Zendesk/Salesforce certificates
# against the system roots).
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 escalator \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin escalator

COPY --from=builder /out/escalator /usr/local/bin/escalator

# Where the worker looks for its per-org config (mount a file or a ConfigMap
# here). Everything else has loopback defaults: see src/settings.rs, or
# `escalator worker --help` for every ESCALATOR_* variable.
ENV ESCALATOR_CONFIG=/etc/escalator/escalator.toml

USER 10001:10001

# The worker drains on SIGTERM (ESCALATOR_SHUTDOWN_GRACE_MS, 20 s by default):
# give it at least that long before SIGKILL (compose stop_grace_period,
# Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

ENTRYPOINT ["escalator"]
CMD ["worker"]
