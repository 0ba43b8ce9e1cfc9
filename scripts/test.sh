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
exit "$status"
