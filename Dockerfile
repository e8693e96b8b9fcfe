# Multi-stage: build with the Rust toolchain, run on a slim Debian with only the binary, as a
# non-root user. The `rdkafka` crate (KAFKA_CLIENT=rdkafka) builds the bundled librdkafka with
# its own configure and make, and links OpenSSL (TLS/SASL) and zlib dynamically (zstd is built
# in). So the build stage needs a C/C++ toolchain, make, perl, pkg-config and the OpenSSL and
# zlib headers, and the runtime stage libssl3, zlib1g and ca-certificates (for
# KAFKA_SECURITY_PROTOCOL=ssl with the system's CA store). `ldd service-courier`: libz,
# libssl, libcrypto, libgcc_s, libm, libc.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       build-essential perl pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first (librdkafka included), so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY migrations ./migrations
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin service-courier

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin courier
COPY --from=build /src/target/release/service-courier /usr/local/bin/service-courier
USER 10001:10001
# SIGTERM stops polling, drains, commits the final offsets, exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["service-courier"]
CMD ["run"]
