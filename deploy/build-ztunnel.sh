#!/usr/bin/env bash
# Builds the `ztunnel` binary the DaemonSet image ships: release, linked as a
# static PIE against glibc. Prints its path.
#
# Why static: a node proxy's resident memory is mostly the pages of its code,
# and a dynamically linked process maps libc, libm and ld.so whole (the
# kernel maps 64 KiB around every page a process touches), ≈1.8 MiB here;
# linked statically, only the glibc objects the binary calls come along and
# VmRSS is ≈1.2 MiB lower (docs/ztunnel.md). ASLR stays (static-pie). Name
# resolution works for `files` and `dns` in /etc/nsswitch.conf, which glibc
# ≥ 2.34 has built in (no NSS modules are loaded).
#
# `--target` keeps the static flag off build scripts and proc macros (which
# cannot be static) and puts the result in its own directory, so this never
# invalidates the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release -q -p ztunnel --bin ztunnel --target "$triple"
echo "$PWD/target/$triple/release/ztunnel"
