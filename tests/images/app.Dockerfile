# The container tests' app, client and collector: nginx and curl with the image's own
# OpenSSL (libssl3 from Debian's packages, a file of this image's layers, not the
# host's), and libpython3.11 for the rotel-agent binary the compose test mounts; on
# the local base scripts/image.sh makes (no registry reachable in CI).
ARG BASE=flowtel-base:bookworm
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light curl openssl libpython3.11 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
