# Multi-stage: build with the Rust toolchain, run on a slim Debian with only the binary, as a
# non-root user. The binary needs glibc and nothing else (no OpenSSL: Kafka and PostgreSQL are
# spoken in plain TCP).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY schema.sql ./
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin service-courier

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin courier
COPY --from=build /src/target/release/service-courier /usr/local/bin/service-courier
USER 10001:10001
# SIGTERM stops polling, drains, commits the final offsets, exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["service-courier"]
CMD ["run"]
