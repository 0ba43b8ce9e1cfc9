#!/usr/bin/env bash
# The test command (README "Test it"; .ci/run runs exactly this). Needs root: the
# end-to-end tests load the real probes and create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
cargo test --release --locked "$@"
