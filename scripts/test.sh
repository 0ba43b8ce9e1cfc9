#!/usr/bin/env bash
# The test command (README "Test it"; .ci/run runs exactly this). Needs root: the
# end-to-end tests load the real probes and create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo build --release --locked
log=$(mktemp)
status=0
cargo test --release --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "flowtel: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
# The kernel matrix: Debian's 5.10, 6.1, 6.12 and newest kernels under qemu, each
# running the end-to-end subset (docs/kernels.md). Not yet part of every run: four
# kernels take about 45 minutes with two guests at once (5.10 alone about 25), too much
# of CI's 90 beside the host suite; KERNEL_MATRIX=1 runs it (docs/kernels.md).
if [[ ${KERNEL_MATRIX:-} == 1 ]]; then
  KERNEL_MATRIX_JOBS=${KERNEL_MATRIX_JOBS:-2} bash scripts/kernel-matrix.sh || status=1
else
  echo "!!!!!!!! NOT RUN: the kernel matrix (KERNEL_MATRIX=1 runs it; see docs/kernels.md) !!!!!!!!" >&2
fi
exit "$status"
