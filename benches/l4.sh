#!/usr/bin/env bash
# L4 benchmark: direct TCP between two pod namespaces on different nodes vs
# the same through both ztunnels (HBONE), in one local cluster; everything
# pinned to one vCPU; medians of 3 rounds with min–max. Needs root, iperf3,
# sockperf and wrk (apt-get install iperf3 sockperf wrk).
#   bash benches/l4.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CPU=${CPU:-1}
ROUNDS=${ROUNDS:-3}
for t in iperf3 sockperf wrk; do
  command -v "$t" >/dev/null || { echo "needs $t (apt-get install iperf3 sockperf wrk)"; exit 1; }
done
cargo build --release -q -p ambit --bin ambit --example l4_bench
# The ztunnel as the DaemonSet image ships it (static PIE).
AMBIT_ZTUNNEL_BIN=$(deploy/build-ztunnel.sh)
export AMBIT_ZTUNNEL_BIN
# One vCPU for everything: one worker thread per ztunnel, as a DaemonSet
# limited to one CPU would run; access logs off (they are per connection).
export ZTUNNEL_WORKER_THREADS=${ZTUNNEL_WORKER_THREADS:-1}
export AMBIT_ZTUNNEL_LOG=${AMBIT_ZTUNNEL_LOG:-warn}
out=$(mktemp)
for _ in $(seq "$ROUNDS"); do
  taskset -c "$CPU" target/release/examples/l4_bench >> "$out"
done
python3 benches/l4_table.py "$CPU" < "$out"
rm -f "$out"
# Churn (issue target: RSS growth < 5 %): CHURN=300 bash benches/l4.sh
if [ -n "${CHURN:-}" ]; then
  taskset -c "$CPU" target/release/examples/l4_bench --churn "$CHURN" | grep churn_ | tr ' ' '\n'
fi
