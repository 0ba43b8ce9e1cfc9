# flowtel's container image. Two ways to build it (scripts/image.sh does either, and
# makes local base images from Debian's packages where no registry is reachable):
#
#   docker build -t flowtel .                       the full build: the project's own
#       setup and the same `cargo build --release --locked` as CI (scripts/test.sh)
#   docker build --target prebuilt -t flowtel .     the runtime around the binary
#       `cargo build --release` left in target/release (CI builds it this way)
#
# The base images are build arguments (BUILD_IMAGE, RUNTIME_IMAGE); the runtime default
# is distroless (glibc, CA certificates, no shell). How to run it: README "Run it in a
# container" (the flags differ between Docker engines).
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12

# First, so that the classic builder's `--target prebuilt` builds nothing else.
FROM ${RUNTIME_IMAGE} AS prebuilt
COPY target/release/flowtel /usr/local/bin/flowtel
# Root in the container, but only with the capabilities the run command grants: the
# probes need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or CAP_SYS_ADMIN), which a
# non-root user only gets through file capabilities that image layers do not reliably keep.
USER 0
ENTRYPOINT ["/usr/local/bin/flowtel"]
CMD ["run"]

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
RUN bash scripts/setup.sh --build-only \
 && cargo build --release --locked -p flowtel

FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/flowtel /usr/local/bin/flowtel
USER 0
ENTRYPOINT ["/usr/local/bin/flowtel"]
CMD ["run"]
