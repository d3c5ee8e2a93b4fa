# syntax=docker/dockerfile:1
#
# event-ingestor container image.
#
#   docker build -t event-ingestor .
#
# Stages: `chef` (Rust toolchain + the C build tools librdkafka needs + cargo-chef), `planner` (the
# dependency recipe), `builder` (dependencies in their own cached layer, then the service), and the
# runtime: distroless `cc-debian12:nonroot` — glibc, libgcc, libssl3 and CA certificates; no shell, no
# package manager. The binary links OpenSSL dynamically against that libssl3 (Debian 12 on both
# sides); zlib and zstd are linked statically (LIBZ_SYS_STATIC=1; zstd-sys always builds its own),
# because the distroless base has neither.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS chef
# librdkafka is built from source by rdkafka-sys (its ./configure + make): a C toolchain, make,
# pkg-config and the OpenSSL headers. No cmake, no curl, no SASL/GSSAPI. Versions are those of the
# pinned Debian release (the runtime's libssl3 must match its ABI, not an exact build).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# Dependencies only (librdkafka's C build included): this layer is reused until Cargo.toml/Cargo.lock
# change. The recipe carries Cargo.lock; the build below is --locked.
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json --bin event-ingestor
COPY . .
RUN cargo build --release --locked --bin event-ingestor \
 && install -D -m 0755 target/release/event-ingestor /out/usr/local/bin/event-ingestor \
 && install -d -o 65532 -g 65532 -m 0750 /out/var/lib/event-ingestor/spool

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="event-ingestor" \
      org.opencontainers.image.description="HTTP gateway that publishes events to Apache Kafka" \
      org.opencontainers.image.licenses="MIT"
COPY --from=builder /out/ /
# The spool (owned by the runtime user; Kubernetes and compose mount a volume over it, so the root
# filesystem can stay read-only). The binary's default SPOOL_DIR, `spool`, is relative to this WORKDIR.
WORKDIR /var/lib/event-ingestor
ENV SPOOL_DIR=/var/lib/event-ingestor/spool
# The distroless `nonroot` user, numerically, so runAsNonRoot can verify it.
USER 65532:65532
# HTTP_PORT (POST /events, GET /health) and ADMIN_PORT (/metrics, /livez, /readyz, POST /drain).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/event-ingestor"]
