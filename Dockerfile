# llm-chat-server image: build with the Rust toolchain image, run on a small Debian.
#
#   docker build -t llm-chat-server .
#   docker run --rm -p 127.0.0.1:5000:5000 llm-chat-server     # demo provider, SQLite in /app/data
#
# docker-compose.yml runs two of these behind nginx with Redis and MongoDB.

# ---- build ----
# rust:1 on Debian bookworm: the runtime stage below is bookworm too, so the binary's glibc
# matches.
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: build the real manifests against stub sources, so
# this (slow) layer is reused until Cargo.toml or Cargo.lock change.
# The workspace's other members (the bench and the test kit) only need their manifests and
# stub sources for cargo to read the workspace; they are not built.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
COPY testkit/Cargo.toml testkit/Cargo.toml
RUN mkdir -p src bench/src testkit/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs testkit/src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked --bin llm-chat-server \
    && rm -rf src

# The application itself. The page template and static files are compiled into the binary.
COPY src ./src
COPY templates ./templates
COPY static ./static
# COPY keeps the files' old modification times: touch them so cargo rebuilds over the stubs.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin llm-chat-server \
    && cp target/release/llm-chat-server /usr/local/bin/llm-chat-server

# ---- run ----
FROM debian:bookworm-slim
# ca-certificates: TLS to the LLM provider, MongoDB Atlas and a rediss:// Redis; curl: the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user owning the working directory (SQLite file, saved conversations).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/data /app/saved_conversations \
    && chown -R app:app /app
WORKDIR /app

COPY --from=builder /usr/local/bin/llm-chat-server /usr/local/bin/llm-chat-server

USER app
# Listen on every interface inside the container (the default 127.0.0.1 would be
# unreachable from outside it).
ENV HOST=0.0.0.0 \
    PORT=5000
EXPOSE 5000

# Liveness only: /readyz (Redis, store) is for load balancers and compose's depends_on.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/healthz" || exit 1

# SIGTERM (docker stop) makes the server finish in-flight requests and exit.
STOPSIGNAL SIGTERM
CMD ["llm-chat-server"]
