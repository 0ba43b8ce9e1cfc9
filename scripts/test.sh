#!/usr/bin/env bash
# The test command (README "Test it"; .ci/run runs exactly this). Needs root: the
# end-to-end tests load the real probes and create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo build --release --locked
# The container tests (tests/tests/containers.rs) need a Docker engine: the one `docker`
# reaches, else Debian's dockerd started here for this run and stopped at the end
# (no bridge and no iptables: containers use the host's network).
if ! docker info >/dev/null 2>&1; then
  echo "[test] starting dockerd for the container tests (log: /var/log/flowtel-test-dockerd.log)" >&2
  dockerd --bridge=none --iptables=false --ip6tables=false >/var/log/flowtel-test-dockerd.log 2>&1 &
  dockerd_pid=$!
  trap 'kill "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid" 2>/dev/null' EXIT
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
log=$(mktemp)
status=0
cargo test --release --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "flowtel: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
# The kernel matrix: Debian's 5.10, 6.1, 6.12 and newest kernels under qemu, each
# running the end-to-end subset (docs/kernels.md), two guests at once: about 35
# minutes, within what 85 minutes leave after the host part (KERNEL_MATRIX_BUDGET).
# KERNEL_MATRIX=0 leaves it out of a run by hand; under CI it always runs.
if [[ ${KERNEL_MATRIX:-1} == 0 && ${CI:-} != true ]]; then
  echo "!!!!!!!! NOT RUN: the kernel matrix (KERNEL_MATRIX=0; see docs/kernels.md) !!!!!!!!" >&2
else
  budget=${KERNEL_MATRIX_BUDGET:-$((85 * 60 - SECONDS))}
  echo "[test] kernel matrix: at most $budget s" >&2
  KERNEL_MATRIX_BUDGET=$budget KERNEL_MATRIX_JOBS=${KERNEL_MATRIX_JOBS:-2} bash scripts/kernel-matrix.sh || status=1
fi
exit "$status"
