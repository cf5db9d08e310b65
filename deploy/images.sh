#!/usr/bin/env bash
# Builds Ambit's images without Docker or a daemon: static binaries (glibc,
# static PIE, as deploy/build-ztunnel.sh explains) in otherwise empty images
# (FROM scratch: the binaries, /etc/passwd and /etc/group for user 1337,
# /tmp), written as OCI image layouts with umoci. Names and tags come from
# deploy/images.env.
#
# Reproducible: every file's mtime and every timestamp in the image is
# SOURCE_DATE_EPOCH (default: the last commit's time), so the same sources
# give the same image digests.
#
#   bash deploy/images.sh                 # release binaries -> target/images/
#   PROFILE=dev OUT=/tmp/img bash deploy/images.sh
#
# Prints one line per image: NAME DIGEST LAYOUT:TAG. Run one with
# `podman run oci:LAYOUT:TAG`, or push with `skopeo copy oci:LAYOUT:TAG
# docker://REGISTRY/NAME:TAG`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/images.env
. deploy/images.env
PROFILE=${PROFILE:-release}
OUT=${OUT:-target/images}
command -v umoci >/dev/null || { echo "deploy/images.sh: umoci is required (apt-get install umoci)" >&2; exit 1; }
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

triple=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the static flag off build scripts and proc macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked -q --profile "$PROFILE" --target "$triple" \
  -p ztunnel --bin ztunnel \
  -p controller --bin ambit-controller \
  -p waypoint --bin waypoint \
  -p ambit-node-agent --bin ambit-node-agent \
  -p ambit-cni --bin ambit-cni
case "$PROFILE" in dev | test) built=target/$triple/debug ;; *) built=target/$triple/$PROFILE ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"

# image NAME USER ENTRYPOINT BINARY...
image() {
  local name=$1 user=$2 entry=$3
  shift 3
  local rootfs=$work/$name layout=$OUT/$name
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp"
  for bin in "$@"; do
    install -m 0755 "$built/$bin" "$rootfs/usr/local/bin/$bin"
  done
  printf 'root:x:0:0:root:/:/sbin/nologin\nistio-proxy:x:1337:1337:istio-proxy:/:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nistio-proxy:x:1337:\n' >"$rootfs/etc/group"
  chmod 1777 "$rootfs/tmp"
  chown -R 0:0 "$rootfs"
  find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$TAG"
  umoci insert --image "$layout:$TAG" --history.created "$created" \
    --history.created_by "deploy/images.sh: $*" "$rootfs" /
  umoci config --image "$layout:$TAG" --created "$created" --history.created "$created" \
    --config.user "$user" --config.workingdir / \
    --config.entrypoint "/usr/local/bin/$entry" \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin \
    --config.label "org.opencontainers.image.title=$name" \
    --config.label "org.opencontainers.image.version=$TAG" \
    --config.label "org.opencontainers.image.ref.name=$REGISTRY/$name:$TAG"
  umoci gc --layout "$layout"
  local digest
  digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$layout/index.json")
  echo "$name $digest $layout:$TAG"
}

# ztunnel and the node agent run as root with added capabilities (see
# deploy/daemonset.yaml); the controller and waypoints as 1337.
image "$ZTUNNEL" 0 ztunnel ztunnel
image "$CONTROLLER" 1337 ambit-controller ambit-controller
image "$WAYPOINT" 1337 waypoint waypoint
image "$CNI" 0 ambit-node-agent ambit-node-agent ambit-cni
