# Shared by the image scripts: cache location, content hash, OCI layout -> archive, install.
# Usage (sourced): NAME=busybox; image_begin OUTDIR "<inputs to hash>" || exit 0; ...build
# into $ENTRY_TMP/$NAME (an OCI layout)...; image_end
set -euo pipefail

die() { echo "guest-images/images/$NAME.sh: $*" >&2; exit 1; }

need_pkg() {
	dpkg-query -W -f '${Package} ${Version} ${db:Status-Status}\n' "$1" 2>/dev/null |
		grep -q ' installed$' || die "package $1 is not installed (apt-get install $1)"
	dpkg-query -W -f '${Package}=${Version}\n' "$1"
}

cache_root() {
	if [ -n "${HV_CACHE:-}" ]; then echo "$HV_CACHE"
	elif [ "$(id -u)" = 0 ]; then echo /var/cache/hv
	else echo "$HOME/.cache/hv"; fi
}

# image_begin OUTDIR INPUTS: sets ENTRY; returns 1 (after installing) when cached.
image_begin() {
	OUT=$1
	local hash
	hash=$( (cat "$0" "$(dirname "$0")/lib.sh"; echo "$2") | sha256sum | cut -c1-16)
	ENTRY=$(cache_root)/images/$NAME-$hash
	if [ -f "$ENTRY/$NAME.oci.tar" ]; then image_install; return 1; fi
	mkdir -p "$(cache_root)/images"
	ENTRY_TMP=$(mktemp -d "$(cache_root)/images/.$NAME.XXXXXX")
	chmod 0755 "$ENTRY_TMP"
	trap 'rm -rf "$ENTRY_TMP"' EXIT
}

image_install() {
	mkdir -p "$OUT"
	rm -rf "${OUT:?}/$NAME" "$OUT/$NAME.oci.tar"
	cp -al "$ENTRY/$NAME" "$OUT/$NAME" 2>/dev/null || cp -a "$ENTRY/$NAME" "$OUT/$NAME"
	ln -f "$ENTRY/$NAME.oci.tar" "$OUT/$NAME.oci.tar" 2>/dev/null ||
		cp -f "$ENTRY/$NAME.oci.tar" "$OUT/$NAME.oci.tar"
	echo "$NAME: $OUT/$NAME (OCI layout, tag latest), $OUT/$NAME.oci.tar"
}

# image_end: garbage-collect the layout, tar it as an OCI archive, publish the cache entry.
image_end() {
	umoci gc --layout "$ENTRY_TMP/$NAME"
	chmod -R a+rX "$ENTRY_TMP/$NAME"
	tar -C "$ENTRY_TMP/$NAME" --sort=name --owner=0 --group=0 --numeric-owner \
		-cf "$ENTRY_TMP/$NAME.oci.tar" oci-layout index.json blobs
	rm -rf "$ENTRY_TMP/bundle"
	trap - EXIT
	mv -T "$ENTRY_TMP" "$ENTRY" 2>/dev/null || rm -rf "$ENTRY_TMP"
	image_install
}
