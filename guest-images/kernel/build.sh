#!/bin/bash
# Build hv's own guest kernel from Debian's linux-source-6.1, configured by config.sh.
#
#   guest-images/kernel/build.sh OUTDIR
#
# OUTDIR gets:
#   vmlinux   uncompressed ELF with the PVH note (direct boot by qboot on -M pc, or -M microvm)
#   bzImage   the same kernel for SeaBIOS / any bootloader
#   config    the final .config
#   release   `uname -r` of the kernel (e.g. 6.1.192-hv)
#
# The build is cached in ${HV_CACHE:-/var/cache/hv}/kernel/<hash>; the hash covers config.sh,
# this script, the linux-source-6.1 package version and the compiler, so a machine builds it
# once (about 8 minutes on 2 cores) and later calls only hard-link the files into OUTDIR.
# Concurrent calls wait for each other (flock) instead of building twice.
#
# Exit status: 0 built or cached; 2 a build dependency (linux-source-6.1, ...) is missing,
# with a one-line message; 1 the build failed. Callers fall back to the cloud kernel.
set -euo pipefail

die() { echo "guest-images/kernel/build.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: build.sh OUTDIR"
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
SRC_TAR=/usr/src/linux-source-6.1.tar.xz

if [ -n "${HV_CACHE:-}" ]; then CACHE=$HV_CACHE
elif [ "$(id -u)" = 0 ]; then CACHE=/var/cache/hv
else CACHE=$HOME/.cache/hv; fi

# --- what we build from -------------------------------------------------------------------
missing=()
for p in linux-source-6.1 gcc make bc flex bison libelf-dev libssl-dev; do
	dpkg-query -W -f '${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "guest-images/kernel/build.sh: cannot build the hv kernel: missing ${missing[*]}" \
		"(apt-get install ${missing[*]})" >&2
	exit 2
fi
[ -r "$SRC_TAR" ] || { echo "guest-images/kernel/build.sh: cannot read $SRC_TAR" >&2; exit 2; }
VERSIONS=$(dpkg-query -W -f '${Package}=${Version}\n' linux-source-6.1 gcc make; gcc --version | head -1)
HASH=$( (cat "$HERE/config.sh" "$HERE/build.sh"; echo "$VERSIONS") | sha256sum | cut -c1-16)
ENTRY=$CACHE/kernel/$HASH
FILES="vmlinux bzImage config release"

install_out() {
	mkdir -p "$OUT"
	for f in $FILES; do
		ln -f "$ENTRY/$f" "$OUT/$f" 2>/dev/null || cp -f "$ENTRY/$f" "$OUT/$f"
	done
	echo "kernel: $OUT ($(cat "$ENTRY/release"), cache $ENTRY)"
}
if [ -f "$ENTRY/release" ]; then install_out; exit 0; fi

mkdir -p "$CACHE/kernel"
exec 9>"$CACHE/kernel/.lock"
flock 9 # another build of the same machine: wait for it, then use its result
if [ -f "$ENTRY/release" ]; then install_out; exit 0; fi
rm -rf "$CACHE"/kernel/.build.* # left by an interrupted build (we hold the lock)

# --- build in a temporary folder next to the cache entry, then rename ----------------------
WORK=$(mktemp -d "$CACHE/kernel/.build.XXXXXX")
chmod 0755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
echo "kernel: building hv's guest kernel from $(basename "$SRC_TAR"): about 7 minutes on 2 cores," \
	"once per machine (cached in $CACHE/kernel)" >&2
tar -xf "$SRC_TAR" -C "$WORK"
K=$WORK/linux-source-6.1
[ -d "$K" ] || die "$SRC_TAR has no linux-source-6.1/"

# Reproducible: fixed build user, host and time; no "+" for a tree that is not in git.
export KBUILD_BUILD_USER=hv KBUILD_BUILD_HOST=hv KBUILD_BUILD_TIMESTAMP="$(date -u -d @0)" LOCALVERSION=
LOG=$WORK/build.log
# Progress instead of minutes of silence: a line every 30 s with the objects compiled so far.
START=$SECONDS
(while sleep 30; do
	echo "kernel: $(grep -c '^  CC ' "$LOG" 2>/dev/null || echo 0) objects compiled" \
		"($((SECONDS - START)) s)" >&2
done) &
PROGRESS=$!
trap 'kill $PROGRESS 2>/dev/null; rm -rf "$WORK"' EXIT
{
	make -C "$K" tinyconfig &&
		(cd "$K" && "$HERE/config.sh") &&
		make -C "$K" olddefconfig &&
		(cd "$K" && "$HERE/config.sh" --check) &&
		nice -n 10 make -C "$K" -j"$(nproc)" vmlinux bzImage
} >"$LOG" 2>&1 || {
	kill $PROGRESS 2>/dev/null
	tail -n 30 "$LOG" >&2
	cp "$LOG" "$CACHE/kernel/build-failed.log" 2>/dev/null || true
	die "kernel build failed, see $CACHE/kernel/build-failed.log"
}

# vmlinux: the symbol table is not needed to boot (kallsyms is built in); the PVH note stays.
strip -o "$WORK/vmlinux" "$K/vmlinux"
cp "$K/arch/x86/boot/bzImage" "$WORK/bzImage"
cp "$K/.config" "$WORK/config"
make -s -C "$K" kernelrelease >"$WORK/release"
readelf -n "$WORK/vmlinux" | grep -Eq 'Xen .*(0x00000012|PHYS32_ENTRY)' ||
	die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
kill $PROGRESS 2>/dev/null || true
echo "kernel: built $(cat "$WORK/release") in $((SECONDS - START)) s" >&2
rm -rf "$K" "$LOG"
chmod 0644 "$WORK"/{vmlinux,bzImage,config,release}

trap - EXIT
if ! mv -T "$WORK" "$ENTRY" 2>/dev/null; then rm -rf "$WORK"; fi
install_out
