# Multi-stage build: compile the release binary, then ship it on a slim Debian with libpq.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
# Cargo.toml names the benchmarks (the manifest does not parse without them); the demo compiles
# examples/demo/ in.
COPY benches benches
COPY examples examples
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/dro --create-home dro
COPY --from=build /src/target/release/dr-orchestrator /usr/local/bin/dr-orchestrator
USER dro
WORKDIR /var/lib/dro
ENV DRO_BIND=0.0.0.0:8080 \
    DRO_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
  CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
ENTRYPOINT ["dr-orchestrator"]
CMD ["serve"]
