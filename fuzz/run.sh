#!/usr/bin/env bash
# Runs the HBONE server fuzz target for a bounded time (default 60 s).
# Usage: fuzz/run.sh [seconds]
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/hbone_server
cp -n fuzz/seeds/* fuzz/corpus/hbone_server/ 2>/dev/null || true
RUSTC_BOOTSTRAP=1 cargo fuzz run hbone_server fuzz/corpus/hbone_server -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10
