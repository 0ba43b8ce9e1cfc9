# flowtel's container image. The build stage runs the project's own setup and the same
# `cargo build --release --locked` as CI (scripts/test.sh); the runtime stage holds the
# one binary on a distroless base (glibc, CA certificates, no shell).
#
#   docker build -t flowtel .
#   docker run --rm --pid=host --cgroupns=host --cap-drop=ALL \
#     --cap-add=BPF --cap-add=PERFMON --cap-add=NET_ADMIN --cap-add=DAC_READ_SEARCH --cap-add=SYS_PTRACE \
#     -v /sys/kernel/tracing:/sys/kernel/tracing:ro -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 flowtel
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN bash scripts/setup.sh --build-only \
 && cargo build --release --locked -p flowtel

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/flowtel /usr/local/bin/flowtel
# Root in the container, but only with the capabilities the run command grants: the
# probes need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, which a non-root user only gets
# through file capabilities that image layers do not reliably keep.
USER 0
ENTRYPOINT ["/usr/local/bin/flowtel"]
CMD ["run"]
