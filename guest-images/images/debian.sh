#!/bin/bash
# A Debian bookworm minbase test image (debootstrap from the configured Debian mirror); Cmd ["bash"].
#   guest-images/images/debian.sh OUTDIR  ->  OUTDIR/debian/ (OCI layout), OUTDIR/debian.oci.tar
# Takes about a minute the first time; cached afterwards. Needs root (debootstrap).
NAME=debian
. "$(dirname "$0")/lib.sh"
[ $# -eq 1 ] || die "usage: debian.sh OUTDIR"
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
SUITE=bookworm

# The Debian mirror apt already uses (deb822 .sources or one-line sources.list).
mirror() {
	local m
	m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
		grep -v -- '-security' | head -1)
	[ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
		awk '$3 !~ /security/ {print $2; exit}')
	echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=${HV_DEBIAN_MIRROR:-$(mirror)}
INPUTS=$(need_pkg debootstrap; need_pkg umoci; echo "$SUITE $MIRROR")
image_begin "$1" "$INPUTS" || exit 0

L=$ENTRY_TMP/$NAME B=$ENTRY_TMP/bundle
umoci init --layout "$L"
umoci new --image "$L:latest"
umoci unpack --image "$L:latest" "$B" >/dev/null
debootstrap --variant=minbase "$SUITE" "$B/rootfs" "$MIRROR" >"$ENTRY_TMP/debootstrap.log" 2>&1 ||
	{ tail -20 "$ENTRY_TMP/debootstrap.log" >&2; die "debootstrap from $MIRROR failed"; }
# Like Docker's debian image: no apt caches, no host-specific files.
rm -rf "$B"/rootfs/var/cache/apt/*.bin "$B"/rootfs/var/lib/apt/lists/* "$B"/rootfs/var/log/*.log
: >"$B/rootfs/etc/hostname"
: >"$B/rootfs/etc/resolv.conf"
umoci repack --image "$L:latest" "$B"
umoci config --image "$L:latest" --author hv --config.cmd bash \
	--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
rm -f "$ENTRY_TMP/debootstrap.log"
image_end
