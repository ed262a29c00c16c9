#!/bin/bash
# Build a container root disk (whole-disk ext4) from an OCI layout, for raw-qemu tests.
#   guest-images/images/rootfs-ext4.sh LAYOUT[:TAG] OUT.ext4 [EXTRA_MB]
# (hv itself builds base disks in hv/images/; this is the quick path for guest tests.)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: rootfs-ext4.sh LAYOUT[:TAG] OUT.ext4 [EXTRA_MB]" >&2; exit 2; }
IMG=$1 OUT=$2 EXTRA=${3:-32}
case $IMG in *:*) ;; *) IMG=$IMG:latest ;; esac
TMP=$(mktemp -d "$(dirname "$OUT")/.rootfs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
umoci unpack $([ "$(id -u)" = 0 ] || echo --rootless) --image "$IMG" "$TMP/b" >/dev/null
MB=$(( $(du -sm "$TMP/b/rootfs" | cut -f1) + EXTRA ))
rm -f "$OUT.tmp"
mkfs.ext4 -q -F -L hv-root -d "$TMP/b/rootfs" "$OUT.tmp" "${MB}M" >/dev/null
mv -f "$OUT.tmp" "$OUT"
