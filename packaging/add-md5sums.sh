#!/bin/sh
# Add DEBIAN/md5sums to a .deb built by cargo-deb (which writes none), so that
# `dpkg --verify hark` and debsums can check the installed files. Conffiles are
# left out, as dh_md5sums does: dpkg tracks their checksums itself.
# Usage: packaging/add-md5sums.sh target/debian/hark_VERSION_ARCH.deb
set -eu

deb="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

dpkg-deb -R "$deb" "$work/root"
(
    cd "$work/root"
    conffiles=DEBIAN/conffiles
    find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
        while IFS= read -r f; do
            if [ -f "$conffiles" ] && grep -qxF "/$f" "$conffiles"; then
                continue
            fi
            md5sum "$f"
        done >DEBIAN/md5sums
    chmod 0644 DEBIAN/md5sums
)
# Same compression as cargo-deb; file dates are clamped for a reproducible archive.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(stat -c %Y "$deb")}" \
    dpkg-deb --root-owner-group -Zxz -b "$work/root" "$work/out.deb" >/dev/null
mv "$work/out.deb" "$deb"
