#!/usr/bin/env bash
# Runs a fuzz target for a bounded time (default 60 s).
# Usage: fuzz/run.sh [seconds] [hbone_server|waypoint_front]
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
target="${2:-hbone_server}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p "fuzz/corpus/$target"
if [ "$target" = hbone_server ]; then
  cp -n fuzz/seeds/* fuzz/corpus/hbone_server/ 2>/dev/null || true
fi
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10
