#!/usr/bin/env bash
# Controller scale benchmark (issue: controller): 10,000 pods, 1,000 services,
# 100 connected delta-ADS clients. Pinned to one vCPU, 3 rounds, medians with
# min–max. Usage: benches/controller.sh [extra args for the scale example]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p controller --example scale >/dev/null
bin=target/release/examples/scale
rounds=3
declare -A vals
keys="model_build_ms full_push_ms change_p50_ms change_p99_ms rss_model_mib rss_mib"
for r in $(seq 1 $rounds); do
  line=$(taskset -c 1 "$bin" "$@")
  echo "round $r: $line" >&2
  for kv in $line; do
    k=${kv%%=*}; v=${kv#*=}
    vals[$k]="${vals[$k]:-} $v"
  done
done
printf '%-18s %12s %22s\n' metric median "min–max"
for k in $keys; do
  read -r -a arr <<<"${vals[$k]}"
  sorted=$(printf '%s\n' "${arr[@]}" | sort -g)
  min=$(echo "$sorted" | head -1); max=$(echo "$sorted" | tail -1)
  med=$(echo "$sorted" | sed -n "$(( (${#arr[@]} + 1) / 2 ))p")
  printf '%-18s %12s %22s\n' "$k" "$med" "$min–$max"
done
read -r -a p <<<"${vals[pods]}"; read -r -a s <<<"${vals[services]}"; read -r -a c <<<"${vals[clients]}"
echo "(pods=${p[0]} services=${s[0]} clients=${c[0]}; clients run in a child process: rss is the controller alone)"
