#!/usr/bin/env bash
# Build and run the agent (README "Run it"). Arguments go to flowtel, e.g.
#   sudo scripts/run.sh status
#   sudo OTEL_METRICS_EXPORTER=console OTEL_METRIC_EXPORT_INTERVAL=5000 scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
exec ./target/release/flowtel "$@"
