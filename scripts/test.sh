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
# running the end-to-end subset (docs/kernels.md). Always under CI; elsewhere it takes
# long enough (see docs/kernels.md) that KERNEL_MATRIX=1 asks for it.
if [[ ${CI:-} == true || ${KERNEL_MATRIX:-} == 1 ]]; then
  # Two guests at once: they share the two cores, yet two take 17 min where one takes 9.5.
  KERNEL_MATRIX_JOBS=${KERNEL_MATRIX_JOBS:-2} bash scripts/kernel-matrix.sh || status=1
else
  echo "!!!!!!!! NOT RUN: the kernel matrix (KERNEL_MATRIX=1 runs it; CI always does) !!!!!!!!" >&2
fi
exit "$status"
