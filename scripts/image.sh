#!/usr/bin/env bash
# Builds flowtel's image and tags it $IMAGE (default flowtel:local).
#
#   scripts/image.sh              the full multi-stage build (Rust inside Docker)
#   scripts/image.sh --prebuilt   the runtime stage around target/release/flowtel,
#                                 which `cargo build --release` made already (CI)
#   scripts/image.sh --base       only the local base below (the container tests' app
#                                 image is built on it)
#
# The base images are $BUILD_IMAGE and $RUNTIME_IMAGE, by default the Dockerfile's
# public ones. Where they cannot be pulled (no registry reachable), local ones are
# made from Debian's packages and used instead: flowtel-base:bookworm (debootstrap
# minbase with CA certificates) for the runtime, flowtel-build-base:bookworm (that,
# gcc and rustup's Rust 1.95) for the build. The debootstrap'd tree is cached in
# $IMAGE_CACHE (default /var/cache/flowtel/images). Needs a running Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[image] %s\n' "$*" >&2; }
image=${IMAGE:-flowtel:local}
cache=${IMAGE_CACHE:-/var/cache/flowtel/images}
mode=${1:-full}
case $mode in
  full | --prebuilt | --base) ;;
  *) log "unknown option '$mode' (--prebuilt, --base or none)" && exit 2 ;;
esac

# The Dockerfile's default for a build argument.
default_of() { sed -n "s/^ARG $1=//p" Dockerfile; }

# flowtel-base:bookworm from Debian's packages, unless the engine has it.
local_base() {
  docker image inspect flowtel-base:bookworm >/dev/null 2>&1 && return 0
  local tarball=$cache/bookworm-minbase.tar
  if [[ ! -s $tarball ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 2; }
    log "making a bookworm base with debootstrap (once; cached in $cache)"
    local tree
    mkdir -p "$cache"
    tree=$(mktemp -d "$cache/rootfs.XXXX")
    debootstrap --variant=minbase --include=ca-certificates bookworm "$tree" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
      { log "debootstrap failed; see $cache/debootstrap.log"; exit 1; }
    # apt's lists and the package cache are not part of a base image.
    rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/archives/*.deb
    tar -C "$tree" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
    rm -rf "$tree"
  fi
  docker import "$tarball" flowtel-base:bookworm >/dev/null
}

# The local build base: the local base with what scripts/setup.sh --build-only expects
# of the rust image (gcc, curl, rustup with the stable toolchain on PATH). rustup-init
# comes straight from static.rust-lang.org (sh.rustup.rs does not resolve everywhere
# the registries do).
local_build_base() {
  docker image inspect flowtel-build-base:bookworm >/dev/null 2>&1 && return 0
  local_base
  log "making flowtel-build-base:bookworm (gcc, curl, Rust 1.95 from rustup)"
  # The host's CA bundle: where the network passes through a TLS-inspecting proxy
  # (this kind of machine does), the host trusts its CA and the build must too.
  local context
  context=$(mktemp -d)
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  cat >"$context/Dockerfile" <<'EOF'
FROM flowtel-base:bookworm
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev curl git pkg-config >/dev/null \
 && curl -sSf -o /tmp/rustup-init https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init \
 && chmod +x /tmp/rustup-init && /tmp/rustup-init -y -q --profile minimal --default-toolchain 1.95 && rm /tmp/rustup-init \
 && rm -rf /var/lib/apt/lists/*
EOF
  local status=0
  docker build --network host -t flowtel-build-base:bookworm "$context" || status=$?
  rm -rf "$context"
  return "$status"
}

# The public image when it can be pulled, else the local one `make` builds.
pick() {
  local wanted=$1 local_name=$2 make=$3
  if docker image inspect "$wanted" >/dev/null 2>&1 || timeout 120 docker pull -q "$wanted" >/dev/null 2>&1; then
    echo "$wanted"
  else
    log "$wanted cannot be pulled: using $local_name, made from Debian's packages"
    "$make" >&2 || { log "could not make $local_name"; return 1; }
    echo "$local_name"
  fi
}

if [[ $mode == --base ]]; then
  local_base
  exit 0
fi
runtime_image=$(pick "${RUNTIME_IMAGE:-$(default_of RUNTIME_IMAGE)}" flowtel-base:bookworm local_base)
args=(--build-arg "RUNTIME_IMAGE=$runtime_image" -t "$image")
if [[ $mode == --prebuilt ]]; then
  [[ -x target/release/flowtel ]] || { log "no target/release/flowtel: run cargo build --release --locked first"; exit 2; }
  args+=(--target prebuilt)
else
  build_image=$(pick "${BUILD_IMAGE:-$(default_of BUILD_IMAGE)}" flowtel-build-base:bookworm local_build_base)
  args+=(--build-arg "BUILD_IMAGE=$build_image" --network host)
fi
log "building $image (${args[*]})"
start=$SECONDS
docker build -q "${args[@]}" . >/dev/null
log "built $image in $((SECONDS - start)) s"
