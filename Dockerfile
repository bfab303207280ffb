# Builds both binaries: `offboard` (API + workers, CLI) and `offboard-worker` (workers only);
# never the lab (`offboard-lab`: bench and fault suite), which can flush Redis and drop databases.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin offboard --bin offboard-worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/offboard /src/target/release/offboard-worker /usr/local/bin/
USER nobody
ENTRYPOINT []
CMD ["offboard", "serve"]
