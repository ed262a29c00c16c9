#!/bin/bash
# A tiny offline test image from busybox-static: /bin/busybox + applet links, /etc/passwd and
# /etc/group with root and nobody; Cmd ["sh"].
#   guest-images/images/busybox.sh OUTDIR  ->  OUTDIR/busybox/ (OCI layout), OUTDIR/busybox.oci.tar
NAME=busybox
. "$(dirname "$0")/lib.sh"
[ $# -eq 1 ] || die "usage: busybox.sh OUTDIR"
INPUTS=$(need_pkg busybox-static; need_pkg umoci)
image_begin "$1" "$INPUTS" || exit 0

L=$ENTRY_TMP/$NAME B=$ENTRY_TMP/bundle
umoci init --layout "$L"
umoci new --image "$L:latest"
umoci unpack $([ "$(id -u)" = 0 ] || echo --rootless) --image "$L:latest" "$B" >/dev/null
R=$B/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,tmp,var,proc,sys,dev}
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list-full); do
	[ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
	>"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
umoci repack --image "$L:latest" "$B"
umoci config --image "$L:latest" --author hv --config.cmd sh \
	--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
image_end
