#!/usr/bin/env bash
# One idempotent setup step for a fresh Debian host (root): the Debian packages the
# tests drive, the nightly pieces the kernel programs need, and bpf-linker built
# against the nightly toolchain's own libLLVM (Debian ships no LLVM that
# bpf-linker's default features accept). Both the README and .ci/run call this.
#
# `scripts/setup.sh --build-only` (the Dockerfile's build stage) installs only what
# building needs: the nightly pieces and bpf-linker, not the tests' servers and clients.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
build_only=false
[[ "${1:-}" == "--build-only" ]] && build_only=true

# dnsmasq-base and bind9-dnsutils (dig): the DNS server and client of the DNS tests;
# dnsperf: the DNS load generator of the benchmark; docker-compose (1.29, no engine
# needed): checks the compose example; nginx, wrk and openssl: the HTTP(S) server, load
# generator and certificate maker of the HTTP tests and benchmark.
# prometheus (2.42): parses every dashboard query. docker.io (the engine, 20.10) and
# debootstrap (local base images): the container and compose tests.
apt_packages=(iproute2 iptables iperf3 procps curl util-linux dnsmasq-base bind9-dnsutils dnsperf docker-compose nginx wrk openssl prometheus docker.io debootstrap)
if $build_only; then
  apt_packages=(curl)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rotel: a third-party (Rust) OpenTelemetry collector, used as a real OTLP peer in tests.
if ! $build_only && ! command -v rotel-agent >/dev/null 2>&1 && ! python3 -c 'import rotel' >/dev/null 2>&1; then
  log "installing rotel from PyPI"
  python3 -m pip install -q rotel
fi
# kubernetes-validate: checks the manifests against the Kubernetes API schemas, offline.
if ! $build_only && ! command -v kubernetes-validate >/dev/null 2>&1; then
  log "installing kubernetes-validate from PyPI"
  python3 -m pip install -q kubernetes-validate
fi
# @grafana/schema and TypeScript (npm): every dashboard is type-checked against
# Grafana's own dashboard model.
schema_dir=/var/cache/flowtel-test/grafana-schema
if ! $build_only && [[ ! -x $schema_dir/node_modules/.bin/tsc ]]; then
  log "installing @grafana/schema and typescript from npm"
  mkdir -p "$schema_dir"
  (cd "$schema_dir" && npm init -y >/dev/null &&
    npm install --silent --no-audit --no-fund @grafana/schema@13.2.3 typescript@7.0.2)
fi
# dnslib: the tests' DNS server for SERVFAIL, slow and dropped answers.
if ! $build_only && ! python3 -c 'import dnslib' >/dev/null 2>&1; then
  log "installing dnslib from PyPI"
  python3 -m pip install -q dnslib
fi
# A real MaxMind-format City database for the GeoIP test: GeoLite2 City (2018, CC BY-SA
# 4.0), as the PyPI package maxminddb-geolite2 ships it.
geoip_db=/var/cache/flowtel-test/GeoLite2-City.mmdb
if ! $build_only && [[ ! -s $geoip_db ]]; then
  log "fetching the GeoLite2 City test database (maxminddb-geolite2 from PyPI)"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: maxminddb-geolite2==2018.703 -d "$tmp"
  tar -xzf "$tmp"/maxminddb-geolite2-2018.703.tar.gz -C "$tmp"
  mkdir -p "$(dirname "$geoip_db")"
  mv "$tmp"/maxminddb-geolite2-2018.703/_maxminddb_geolite2/GeoLite2-City.mmdb "$geoip_db"
  rm -rf "$tmp"
fi

# The kernel programs are built with one dated nightly (probes/ebpf/nightly-toolchain):
# another nightly's LLVM emits different BPF, which an older kernel's verifier may
# refuse (2026-10-29's failed the DNS egress program on 6.18). About 20 s to download.
nightly=$(tr -d '[:space:]' <"$(dirname "$0")/../probes/ebpf/nightly-toolchain")
if ! rustup run "$nightly" rustc -V >/dev/null 2>&1; then
  log "installing $nightly"
  rustup toolchain install "$nightly" --profile minimal --component rust-src
fi
if [[ ! -d $(rustc "+$nightly" --print sysroot)/lib/rustlib/src/rust/library ]]; then
  log "adding rust-src to $nightly"
  rustup component add rust-src --toolchain "$nightly"
fi

sysroot=$(rustc "+$nightly" --print sysroot)
libllvm=$(basename "$(ls "$sysroot"/lib/libLLVM.so.* | head -n 1)")
# A bpf-linker built against another nightly's LLVM cannot read this one's bitcode.
if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version >/dev/null 2>&1 ||
  ! ldd "$(command -v bpf-linker)" | grep -qF "$libllvm"; then
  llvm_major=$(rustc "+$nightly" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  log "building bpf-linker against $libllvm (LLVM $llvm_major)"
  RUSTFLAGS="-C link-arg=-L$sysroot/lib -C link-arg=-l:$libllvm -C link-arg=-Wl,-rpath,$sysroot/lib" \
    cargo "+$nightly" install --locked bpf-linker --no-default-features \
      --features "llvm-$llvm_major,no-llvm-linking"
fi
log "ready: $(bpf-linker --version)"
