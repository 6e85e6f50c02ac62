# syntax=docker/dockerfile:1
# The mesh's images, one target each:
#   docker build --target proxy         -t outrigger/proxy:TAG .
#   docker build --target proxy-init    -t outrigger/proxy-init:TAG .
#   docker build --target control-plane -t outrigger/control-plane:TAG .
#   docker build --target injector      -t outrigger/injector:TAG .
#   docker build --target cli           -t outrigger/cli:TAG .  (helm test)
# tests/e2e/kind.sh builds them all and loads them into a kind cluster.
# Every image runs as a non-root user except proxy-init (the iptables
# redirect needs root with NET_ADMIN and NET_RAW; the injector sets that).
# The binaries are built with the `image` profile: the release build without
# debug info or symbols (Cargo.toml; sizes in README.md).
# .git is not sent to the build, so the commit the binaries report in
# outrigger_build_info comes from a build argument ("unknown" without it):
#   docker build --build-arg OUTRIGGER_GIT_SHA=$(git rev-parse HEAD) ...

FROM rust:1.95-bookworm AS build
ARG OUTRIGGER_GIT_SHA=""
ENV OUTRIGGER_GIT_SHA=${OUTRIGGER_GIT_SHA}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile image --locked \
      -p outrigger-proxy -p outrigger-control-plane -p outrigger-injector \
      -p outrigger-cli \
 && mkdir /out \
 && cp target/image/outrigger-proxy target/image/outrigger-control-plane \
       target/image/outrigger-injector target/image/outrigger /out/

# The sidecar: distroless, no shell, no iptables. The injector runs it as
# 2102 (the UID the init step exempts from the redirect).
FROM gcr.io/distroless/cc-debian12:nonroot AS proxy
COPY --from=build /out/outrigger-proxy /usr/local/bin/outrigger-proxy
USER 2102:2102
ENTRYPOINT ["/usr/local/bin/outrigger-proxy"]
CMD ["run"]

# The init step of every injected pod: `outrigger-proxy init` (the same
# binary as the sidecar, so the rules and the proxy's ports come from one
# build) with iptables (Debian's package has both the nft and the legacy
# backends). The injector runs it as root with NET_ADMIN and NET_RAW only;
# nothing else in the mesh runs as root.
FROM debian:bookworm-slim AS proxy-init
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/outrigger-proxy /usr/local/bin/outrigger-proxy
USER 0:0
ENTRYPOINT ["/usr/local/bin/outrigger-proxy"]
CMD ["init"]

FROM gcr.io/distroless/cc-debian12:nonroot AS control-plane
COPY --from=build /out/outrigger-control-plane /usr/local/bin/outrigger-control-plane
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/outrigger-control-plane"]
CMD ["run", "--kubernetes"]

FROM gcr.io/distroless/cc-debian12:nonroot AS injector
COPY --from=build /out/outrigger-injector /usr/local/bin/outrigger-injector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/outrigger-injector"]
CMD ["run"]

# The command line (`outrigger`), for the chart's helm test (outrigger check).
FROM gcr.io/distroless/cc-debian12:nonroot AS cli
COPY --from=build /out/outrigger /usr/local/bin/outrigger
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/outrigger"]
