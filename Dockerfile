# Multi-stage build: compile in the Rust image, run from a slim Debian as a non-root user.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so they are cached across source changes. No default features:
# the service only, without the measuring tool ordersaga-bench and the crates only it uses.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && cargo build --release --locked --no-default-features --bin ordersaga \
 && rm -rf src
COPY src src
COPY migrations migrations
COPY build.rs build.rs
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --no-default-features --bin ordersaga

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home ordersaga
COPY --from=build /src/target/release/ordersaga /usr/local/bin/ordersaga
USER ordersaga
EXPOSE 8000 8001
ENTRYPOINT ["ordersaga"]
CMD ["all"]
