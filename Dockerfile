# syntax=docker/dockerfile:1
# One image for every service: `ssak3 serve <reservation|payment|notify|mypage>`.
# Build: docker build -t ssak3:dev .
FROM rust:1.95-slim-bookworm AS build
# libpq and SQLite are built from source into the binary (pq-sys and
# libsqlite3-sys, "bundled"; the image has the C compiler); libpq's TLS uses
# the system OpenSSL, so its headers; jemalloc (the allocator) builds with
# make. Protos compile with protox.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev make pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ssak3 \
 && install -D target/release/ssak3 /out/ssak3

# What the binary links at run time: glibc, libgcc_s, libssl3 and libcrypto3
# (the same Debian 12 as the build stage). No shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ssak3 /usr/local/bin/ssak3
# A fixed numeric non-root user, so Kubernetes can check runAsNonRoot.
USER 65532:65532
# The chart sets SSAK3_LISTEN per service (ports 50051–50054); this default
# suits `docker run … ssak3 serve reservation`.
ENV SSAK3_LOG_FORMAT=json SSAK3_LISTEN=0.0.0.0:50051
EXPOSE 50051 50052 50053 50054
ENTRYPOINT ["/usr/local/bin/ssak3"]
CMD ["serve", "reservation"]
