#!/usr/bin/env bash
# e2e-setup.sh -- fetch what the QEMU end-to-end tests boot, into a cache; idempotent, needs root.
#
#   * the Debian kernel package that linux-image-amd64 currently depends on (e.g.
#     linux-image-6.1.0-56-amd64) and e2fsck-static: `apt-get download` + `dpkg-deb -x`
#     into $IBU_E2E_CACHE/<package>_<version>/ -- nothing is installed from them;
#   * modules.dep for that kernel (depmod -b on the extracted tree), for mkinitramfs.
#
# Reruns cost nothing once the cache holds the current kernel; without network or a package
# index the newest cached kernel is used. Prints, on stdout, lines the tests read:
#   IBU_E2E_KVER=6.1.0-56-amd64
#   IBU_E2E_KERNEL_DIR=/var/cache/ibu-e2e/linux-image-6.1.0-56-amd64_6.1.158-1
#   IBU_E2E_E2FSCK_STATIC=/var/cache/ibu-e2e/e2fsck-static_1.47.0-2+b2/sbin/e2fsck.static
# Environment: IBU_E2E_CACHE (default /var/cache/ibu-e2e).
set -euo pipefail
CACHE=${IBU_E2E_CACHE:-/var/cache/ibu-e2e}
log() { echo "e2e-setup: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (apt-get download into $CACHE)"; exit 1; }
mkdir -p "$CACHE/debs"
exec 9>"$CACHE/.lock"
flock 9                                   # two test runs must not extract into the same dir

updated=
apt_update() { [ -n "$updated" ] || { log "apt-get update"; apt-get update -qq >&2 || true; updated=1; }; }
# the versioned kernel package of the linux-image-amd64 candidate
kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }'; }

# fetch PKG -> prints the extracted dir $CACHE/<pkg>_<version> (reused when present)
fetch() {
  local pkg=$1 ver dir deb
  ver=$(candidate "$pkg")
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then apt_update; ver=$(candidate "$pkg"); fi
  dir=$CACHE/${pkg}_${ver//:/%3a}
  if [ -n "$ver" ] && [ "$ver" != "(none)" ] && [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    # offline: the newest complete extraction of this package, if any
    dir=$(ls -d "$CACHE/${pkg}_"* 2>/dev/null | while read -r d; do [ -f "$d/.complete" ] && echo "$d"; done | sort -V | tail -n 1)
    [ -n "$dir" ] || { log "no candidate for $pkg and nothing cached: check the apt sources"; return 1; }
    log "no package index for $pkg; using cached $dir"; echo "$dir"; return 0
  fi
  rm -f "$CACHE/debs/${pkg}_"*.deb
  # Sandbox::User=root: the cache may not be writable by the _apt user
  if ! (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2); then
    apt_update                             # a stale index gives 404s
    (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2)
  fi
  deb=$(ls "$CACHE/debs/${pkg}_"*.deb | head -n 1)
  rm -rf "$dir" "$dir.part"
  dpkg-deb -x "$deb" "$dir.part"
  basename "$deb" > "$dir.part/.deb"
  touch "$dir.part/.complete"
  mv "$dir.part" "$dir"
  log "extracted $(basename "$deb") to $dir"
  echo "$dir"
}

kpkg=$(kernel_pkg)
[ -n "$kpkg" ] || { apt_update; kpkg=$(kernel_pkg); }
if [ -z "$kpkg" ]; then
  kdir=$(ls -d "$CACHE"/linux-image-*-amd64_* 2>/dev/null | sort -V | tail -n 1)
  [ -n "$kdir" ] && [ -f "$kdir/.complete" ] || { log "cannot resolve linux-image-amd64 and no kernel cached"; exit 1; }
  kpkg=$(basename "$kdir"); kpkg=${kpkg%%_*}
else
  kdir=$(fetch "$kpkg")
fi
kver=${kpkg#linux-image-}
[ -f "$kdir/boot/vmlinuz-$kver" ] || { log "$kdir/boot/vmlinuz-$kver missing"; exit 1; }
# the .deb has no modules.dep (depmod runs at install time); mkinitramfs needs it
if [ ! -s "$kdir/lib/modules/$kver/modules.dep" ]; then
  depmod -b "$kdir" "$kver"
  log "depmod done for $kver"
fi
edir=$(fetch e2fsck-static)
[ -x "$edir/sbin/e2fsck.static" ] || { log "$edir/sbin/e2fsck.static missing"; exit 1; }

echo "IBU_E2E_KVER=$kver"
echo "IBU_E2E_KERNEL_DIR=$kdir"
echo "IBU_E2E_E2FSCK_STATIC=$edir/sbin/e2fsck.static"
