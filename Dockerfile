# syntax=docker/dockerfile:1
#
# escalator: one binary, subcommands `worker` (default), `sim`, `demo`,
# `topology`, `bench`.
#
#   docker build -t escalator .
#   docker run --rm escalator --help
#
# Build stage: the toolchain must be at least Cargo.toml's rust-version (1.88:
# edition 2024, let-chains). The image tag is an ARG so it can be raised
# without editing this file: --build-arg RUST_VERSION=1.90
ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS builder
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
# the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin escalator \
 && install -D -m 0755 target/release/escalator /out/escalator

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
