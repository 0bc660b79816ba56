#!/usr/bin/env bash
# zfs-setup.sh -- everything the ZFS tests boot (test/zfs), in a cache; idempotent, needs root.
# Nothing of ZFS or the guest kernel is installed on the host: packages are `apt-get download`ed
# and unpacked with `dpkg-deb -x`.
#
#   * the guest kernel: the package linux-image-amd64 currently depends on, via
#     scripts/e2e-setup.sh (shared with the e2e boots, cached in $IBU_E2E_CACHE);
#   * ZFS modules for that kernel, built with dkms (nice -n 19) from zfs-dkms against the
#     unpacked headers, cached in $CACHE/modules/<kernel ABI>/zfs-<zfs-dkms version>/ (a hit
#     also needs `modinfo -F vermagic zfs.ko` to name the ABI): only a new kernel ABI or a new
#     ZFS package rebuilds them (~3.5 min on 2 cores);
#   * the ZFS userland layer: zfsutils-linux + its libraries, udev, unpacked and usr-merged in
#     $CACHE/userland/zfs-<version>_udev-<version>/ (the guest overlays it on the host's root);
#   * the guest initramfs: busybox, the kernel modules the guest needs (virtio, 9p, overlay,
#     loop, ext4, zfs) in load order and test/zfs/guest-init.sh as /init, in
#     $CACHE/guest/<kernel ABI>_zfs-<version>/initrd.img (rebuilt when its inputs change).
#
# Host changes: adds bookworm + bookworm-security `contrib` (zfs-dkms and zfsutils-linux live
# there) to /etc/apt/sources.list.d/ibu-zfs-contrib.sources when apt does not know them yet, and
# apt-get installs the build tools that are missing (dkms, kmod, gcc-12, make, ...; see
# scripts/install-deps.sh). Offline, the newest cached build for the cached kernel is used.
#
# Prints, on stdout, the lines test/zfs/harness.ts reads (IBU_ZFS_*=...); logs go to stderr.
# Environment: IBU_ZFS_CACHE (default /var/cache/ibu-zfs), IBU_E2E_CACHE (kernel, see
# e2e-setup.sh), IBU_ZFS_MIRROR / IBU_ZFS_SECURITY_MIRROR (for the contrib sources it adds).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/.." && pwd -P)
CACHE=$(realpath -m -- "${IBU_ZFS_CACHE:-/var/cache/ibu-zfs}")
MIRROR=${IBU_ZFS_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${IBU_ZFS_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SOURCES=/etc/apt/sources.list.d/ibu-zfs-contrib.sources
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
GUEST_INIT=$REPO/test/zfs/guest-init.sh
export DEBIAN_FRONTEND=noninteractive PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
log() { echo "zfs-setup: $*" >&2; }
die() { log "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (apt-get, dkms, mknod)"
case $CACHE in *[[:space:]]*) die "IBU_ZFS_CACHE must not contain spaces: $CACHE" ;; esac
[ -f "$GUEST_INIT" ] || die "$GUEST_INIT is missing"
mkdir -p "$CACHE/debs"
exec 9>"$CACHE/.lock"
flock 9                                  # one setup per cache at a time (tests may run in parallel)
t0=$SECONDS
# leftovers of a setup that was killed (we hold the lock: nothing else is writing them)
rm -rf "$CACHE"/build.* "$CACHE"/userland/*.part.* "$CACHE"/modules/*/*.part.* "$CACHE"/guest/*/*.part.* "$CACHE"/guest/*.stage.*

# apt-get install/update share one lock with the other tools of this checkout
updated=
apt_update() { [ -n "$updated" ] || { log "apt-get update"; flock /tmp/apt.lock apt-get update -qq >&2 || true; updated=1; }; }
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
candidate() {
  local v
  v=$(apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')
  [ "$v" = "(none)" ] || echo "$v"
}

# ------------------------------------------------------------------ 1. the guest kernel
kout=$(bash "$HERE/e2e-setup.sh")
KV=$(echo "$kout" | sed -n 's/^IBU_E2E_KVER=//p')
KDIR=$(echo "$kout" | sed -n 's/^IBU_E2E_KERNEL_DIR=//p')
[ -n "$KV" ] && [ -d "$KDIR/lib/modules/$KV" ] || die "scripts/e2e-setup.sh gave no kernel: $kout"
KPKG=linux-image-$KV
KPKGVER=$(basename "$KDIR"); KPKGVER=${KPKGVER#*_}; KPKGVER=${KPKGVER//%3a/:}

# ------------------------------------------------------------------ 2. apt sources: contrib
if [ ! -f "$KEYRING" ]; then apt_update; flock /tmp/apt.lock apt-get install -y -q debian-archive-keyring >&2; fi
ARCH=$(dpkg --print-architecture)
index_file() {  # index file of a configured "SUITE COMPONENT" (empty when not configured)
  apt-get indextargets --format '$(RELEASE) $(COMPONENT) $(ARCHITECTURE) $(FILENAME)' \
    'Created-By: Packages' 2>/dev/null | awk -v s="$1" -v c="$2" -v a="$ARCH" \
    '$1 == s && $2 == c && $3 == a { print $4; exit }'
}
need_update=
# the suites added are bookworm's: never mix them into another release's sources
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
suites=("bookworm main" "bookworm contrib" "bookworm-security main" "bookworm-security contrib")
[ "$codename" = bookworm ] || { log "host is '$codename', not Debian 12 (bookworm): not adding apt sources; enable contrib yourself"; suites=(); }
for sc in "${suites[@]}"; do
  set -- $sc
  f=$(index_file "$1" "$2")
  if [ -z "$f" ]; then
    uri=$MIRROR; [ "$1" = bookworm-security ] && uri=$SECURITY_MIRROR
    log "adding '$1 $2' ($uri) to $SOURCES"
    [ -s "$SOURCES" ] && echo >> "$SOURCES"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: %s\n' "$uri" "$1" "$2" "$KEYRING" >> "$SOURCES"
    need_update=1
  elif ! ls "${f%_Packages*}_Packages"* > /dev/null 2>&1; then
    need_update=1                         # configured, but its index was never downloaded
  fi
done
[ -z "$need_update" ] || apt_update

# ------------------------------------------------------------------ 3. resolve the ZFS version
ZFSVER=$(candidate zfs-dkms); UDEVVER=$(candidate udev)
if [ -z "$ZFSVER" ] || [ -z "$UDEVVER" ]; then apt_update; ZFSVER=$(candidate zfs-dkms); UDEVVER=$(candidate udev); fi
modules_ok() {  # modules_ok DIR: a complete set of modules built for $KV
  [ -f "$1/BUILDINFO" ] && [ -f "$1/spl.ko" ] && [ -f "$1/zfs.ko" ] &&
    modinfo -F vermagic "$1/zfs.ko" 2>/dev/null | grep -q "^$KV "
}
if [ -z "$ZFSVER" ] || [ -z "$UDEVVER" ]; then
  # offline (no index): the newest cached build for this kernel whose userland is cached too
  for d in $(ls -d "$CACHE/modules/$KV"/zfs-* 2>/dev/null | sort -V -r); do
    v=${d##*/zfs-}
    u=$(ls -d "$CACHE/userland/zfs-${v}_udev-"* 2>/dev/null | sort -V | tail -n 1)
    if modules_ok "$d" && [ -n "$u" ] && [ -f "$u/.complete" ]; then ZFSVER=$v; UDEVVER=${u##*_udev-}; break; fi
  done
  [ -n "$ZFSVER" ] || die "cannot resolve zfs-dkms/udev (is contrib enabled? is the network up?) and nothing is cached for kernel $KV in $CACHE"
  log "no package index for zfs-dkms; using cached zfs $ZFSVER, udev $UDEVVER"
fi
ZFSUP=${ZFSVER%%-*}
MODS=$CACHE/modules/$KV/zfs-$ZFSVER
USERLAND=$CACHE/userland/zfs-${ZFSVER}_udev-$UDEVVER
log "kernel $KPKG $KPKGVER, zfs-dkms $ZFSVER, udev $UDEVVER"

# ------------------------------------------------------------------ 4. host tools
need=(kmod cpio busybox-static e2fsprogs qemu-system-x86)
modules_ok "$MODS" || need+=(dkms make gcc-12 libc6-dev dpkg-dev perl file lsb-release libelf1)
missing=()
for p in "${need[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  flock /tmp/apt.lock apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { updated=; apt_update; flock /tmp/apt.lock apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
fi

# download PKG=VER...: .debs into $CACHE/debs (kept: a rerun finds them), refresh the index once on a 404
deb_of() {  # deb_of PKG[=VER]: its .deb in $CACHE/debs, or nothing
  local p=${1%%=*} v=${1#*=} f
  [ "$v" = "$1" ] && v='*'
  for f in "$CACHE/debs/${p}_"${v//:/%3a}_*.deb; do [ -f "$f" ] && { echo "$f"; return 0; }; done
  return 0
}
download() {
  local todo=() p
  for p in "$@"; do [ -n "$(deb_of "$p")" ] || todo+=("$p"); done
  [ ${#todo[@]} -gt 0 ] || return 0
  log "apt-get download ${todo[*]}"
  # Sandbox::User=root: the cache may not be writable by the _apt user
  (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download "${todo[@]}" >&2) ||
    { updated=; apt_update; (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download "${todo[@]}" >&2); }
}
deb_depends() {  # first alternatives of a .deb's Depends, without versions
  dpkg-deb -f "$1" Depends Pre-Depends 2>/dev/null | sed 's/^[A-Za-z-]*: //' | tr ',' '\n' |
    sed 's/|.*//; s/(.*)//; s/:any//; s/[[:space:]]//g' | grep -v '^$' || true
}

# ------------------------------------------------------------------ 5. the ZFS userland layer
if [ ! -f "$USERLAND/.complete" ]; then
  pkgs=("zfsutils-linux=$ZFSVER" "udev=$UDEVVER" "libudev1=$UDEVVER")
  download "${pkgs[@]}"
  debs=(); for p in "${pkgs[@]}"; do debs+=("$(deb_of "$p")"); done
  # libraries the zfs/udev binaries need that the host lacks (libzfs4linux, ...), transitively
  while :; do
    have=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Package; done | sort -u)
    extra=$(for d in "${debs[@]}"; do deb_depends "$d"; done | sort -u | awk '/^(lib|zlib)/' |
      { grep -vxF "$have" || true; } | while read -r p; do installed "$p" || echo "$p"; done)
    [ -n "$extra" ] || break
    # shellcheck disable=SC2086
    download $extra
    for p in $extra; do d=$(deb_of "$p"); [ -n "$d" ] || die "apt-get download $p left no .deb"; debs+=("$d"); done
  done
  part=$USERLAND.part.$$
  rm -rf "$part"; mkdir -p "$part"
  for d in "${debs[@]}"; do dpkg-deb -x "$d" "$part"; done
  # The layer goes over the host's root: on a merged-/usr host (/sbin -> usr/sbin) a real /sbin
  # in the layer would hide the host's, so move bin, sbin, lib* under usr/ like the host has them.
  for d in bin sbin lib lib64; do
    if [ -L "/$d" ] && [ -d "$part/$d" ] && [ ! -L "$part/$d" ]; then
      mkdir -p "$part/usr/$d"; cp -a "$part/$d/." "$part/usr/$d/"; rm -rf "${part:?}/$d"
    fi
  done
  rm -rf "$part/usr/share/doc" "$part/usr/share/man" "$part/usr/share/lintian"
  for b in usr/sbin/zpool usr/sbin/zfs; do [ -x "$part/$b" ] || [ -x "$part/${b#usr/}" ] || die "zfsutils-linux has no $b"; done
  echo "zfsutils-linux $ZFSVER, udev $UDEVVER: $(for d in "${debs[@]}"; do basename "$d"; done | tr '\n' ' ')" > "$part/.complete"
  rm -rf "$USERLAND"; mkdir -p "$(dirname "$USERLAND")"; mv "$part" "$USERLAND"
  log "userland layer $USERLAND ($(du -sm "$USERLAND" | cut -f1) MiB, ${#debs[@]} packages)"
fi
# the binaries must find all their libraries on the host root + the layer
for b in "$USERLAND"/usr/sbin/zpool "$USERLAND"/usr/sbin/zfs "$USERLAND"/usr/bin/udevadm; do
  [ -e "$b" ] || continue
  miss=$(LD_LIBRARY_PATH=$USERLAND/usr/lib/x86_64-linux-gnu:$USERLAND/lib/x86_64-linux-gnu ldd "$b" | grep 'not found' || true)
  [ -z "$miss" ] || die "$b: libraries missing on this host: $miss"
done

# ------------------------------------------------------------------ 6. the modules (dkms, cached)
BUILT=
if modules_ok "$MODS"; then
  log "module cache hit: $MODS ($(sed -n 's/^built //p' "$MODS/BUILDINFO"))"
else
  B=$CACHE/build.$$
  trap 'rm -rf "$B"' EXIT
  rm -rf "$B"; mkdir -p "$B/root"
  HPKG=linux-headers-$KV
  # linux-headers-<abi>-common and linux-kbuild-<x.y> come from the same source package
  hdeps=$(apt-cache show "$HPKG=$KPKGVER" 2>/dev/null | awk '/^Depends:/ { print; exit }' | tr ',' '\n' |
    grep -oE 'linux-(headers-[^ ]*-common|kbuild-[0-9.]+)' | sort -u | sed "s/\$/=$KPKGVER/")
  [ -n "$hdeps" ] || die "cannot resolve the headers of $KPKG $KPKGVER (apt index stale or offline?)"
  # shellcheck disable=SC2086
  download "$HPKG=$KPKGVER" $hdeps "zfs-dkms=$ZFSVER"
  for p in "$HPKG=$KPKGVER" $hdeps "zfs-dkms=$ZFSVER"; do dpkg-deb -x "$(deb_of "$p")" "$B/root"; done
  SRC=$B/root/usr/src/zfs-$ZFSUP
  [ -f "$SRC/dkms.conf" ] || die "zfs-dkms $ZFSVER has no $SRC/dkms.conf"
  # zfs declares the newest kernel it supports (2.1.11: 6.2): fail early, not in configure
  kmax=$(awk '$1 == "Linux-Maximum:" { print $2 }' "$SRC/META")
  kcur=$(echo "$KV" | cut -d. -f1,2)
  if [ -n "$kmax" ] && [ "$(printf '%s\n%s\n' "$kcur" "$kmax" | sort -V | tail -n 1)" != "$kmax" ]; then
    die "zfs $ZFSUP supports Linux <= $kmax, the kernel is $KV: use zfs from bookworm-backports"
  fi
  # The unpacked headers include their -common half by an absolute /usr/src path, and dkms derives
  # the source tree from <dir>/build as <dir>/source: point both into the unpacked tree.
  H=$B/root/usr/src/linux-headers-$KV
  sed -i "s|^include /usr/src/|include $B/root/usr/src/|" "$H/Makefile"
  mkdir -p "$B/kdir"
  ln -s "$H" "$B/kdir/build"
  ln -s "$(ls -d "$B"/root/usr/src/linux-headers-*-common | head -n 1)" "$B/kdir/source"
  DK=(--dkmstree "$B/dkms" --sourcetree "$B/root/usr/src" --installtree "$B/dkms-install")
  mkdir -p "$B/dkms"
  dkms add -m zfs -v "$ZFSUP" "${DK[@]}" >&2
  log "dkms build zfs $ZFSUP for $KV (nice -n 19, a few minutes)"
  tb=$SECONDS
  if ! nice -n 19 dkms build -m zfs -v "$ZFSUP" -k "$KV" -j "$(nproc)" "${DK[@]}" --kernelsourcedir "$B/kdir/build" >&2; then
    log "dkms build failed; last lines of its make.log:"
    tail -n 30 "$B/dkms/zfs/$ZFSUP/build/make.log" >&2 || true
    exit 1
  fi
  BUILT=$((SECONDS - tb))
  OUT=$B/dkms/zfs/$ZFSUP/$KV/$(uname -m)/module
  # publish atomically: a half-written folder never looks like a hit
  mkdir -p "$(dirname "$MODS")"
  rm -rf "$MODS.part.$$"; mkdir "$MODS.part.$$"
  cp "$OUT"/*.ko "$MODS.part.$$/"
  cat > "$MODS.part.$$/BUILDINFO" <<EOF
built $(date -u '+%F %T') UTC in $BUILT s with dkms $(dpkg-query -W -f='${Version}' dkms), $(gcc-12 --version | head -n 1)
kernel $KPKG $KPKGVER
zfs-dkms $ZFSVER
vermagic $(modinfo -F vermagic "$OUT/zfs.ko")
EOF
  rm -rf "$MODS"; mv "$MODS.part.$$" "$MODS"
  rm -rf "$B"; trap - EXIT
  modules_ok "$MODS" || die "the built modules in $MODS do not match kernel $KV"
  log "built $(ls "$MODS"/*.ko | wc -l) modules in $BUILT s into $MODS"
fi

# ------------------------------------------------------------------ 7. the guest initramfs
# Kernel modules for: virtio disks and RNG (node's getrandom needs a seeded CRNG), 9p (the host's
# root and /share), overlay (a writable root), loop + ext4 (crc32c_generic first: ext4 only
# names it as a softdep and TCG's CPU has no crc32c instruction), and ZFS.
KMODS="virtio_pci virtio_blk virtio_rng 9pnet_virtio 9p overlay loop crc32c_generic ext4"
BUSYBOX=/bin/busybox
ldd "$BUSYBOX" > /dev/null 2>&1 && die "$BUSYBOX is dynamically linked: install busybox-static"
GDIR=$CACHE/guest/${KV}_zfs-$ZFSVER
key=$( { sha256sum "$GUEST_INIT" "$BUSYBOX" "$MODS"/*.ko "${BASH_SOURCE[0]}"; echo "$KMODS $KPKGVER"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$GDIR/key" 2>/dev/null)" != "$key" ] || [ ! -f "$GDIR/initrd.img" ]; then
  S=$GDIR.stage.$$
  rm -rf "$S"; mkdir -p "$S"/{bin,dev,proc,sys,host,zfsuser,scratch,newroot,etc/ibu-zfs,"lib/modules/$KV/extra"}
  trap 'rm -rf "$S"' EXIT
  cp "$BUSYBOX" "$S/bin/busybox"
  ln -s bin "$S/sbin"
  install -m 755 "$GUEST_INIT" "$S/init"
  mknod -m 600 "$S/dev/console" c 5 1
  for m in $KMODS; do modprobe -d "$KDIR" -S "$KV" --show-depends "$m"; done |
    awk '$1 == "insmod" { print $2 }' | while read -r ko; do
      rel=${ko#"$KDIR"/}; mkdir -p "$S/$(dirname "$rel")"; cp -n "$ko" "$S/$rel"
    done
  cp "$MODS"/*.ko "$S/lib/modules/$KV/extra/"
  cp "$KDIR/lib/modules/$KV"/modules.{order,builtin,builtin.modinfo} "$S/lib/modules/$KV/"
  depmod -b "$S" "$KV"
  # the load order busybox insmod follows (/init has no modprobe)
  # (crc32c-intel, a softdep of ext4, needs SSE4.2: crc32c_generic does the job on any CPU)
  for m in $KMODS zfs; do modprobe -d "$S" -S "$KV" --show-depends "$m"; done |
    awk -v n=$((${#S} + ${#KV} + 15)) '$1 == "insmod" && !seen[$2]++ { print substr($2, n) }' |
    grep -v '/crc32c-intel\.ko$' > "$S/etc/ibu-zfs/modules"
  grep -q '/zfs.ko$' "$S/etc/ibu-zfs/modules" || die "no zfs.ko in the guest's module order"
  # every module's dependencies are staged (else insmod fails in the guest with "Unknown symbol")
  for ko in $(cat "$S/etc/ibu-zfs/modules"); do
    for dep in $(modinfo -F depends "$S/lib/modules/$KV/$ko" | tr ',' ' '); do
      grep -Eq "/${dep//_/[-_]}\.ko\$" "$S/etc/ibu-zfs/modules" || die "module $ko needs $dep, which is not staged"
    done
  done
  echo "$KV" > "$S/etc/ibu-zfs/kver"
  echo "$ZFSVER" > "$S/etc/ibu-zfs/zfsver"
  # rename over the old files: a guest starting right now boots either the old or the new one
  mkdir -p "$GDIR"
  (cd "$S" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -1 > "$GDIR/initrd.img.part.$$"
  cp "$S/etc/ibu-zfs/modules" "$GDIR/modules.order.part.$$"
  mv -f "$GDIR/modules.order.part.$$" "$GDIR/modules.order"
  mv -f "$GDIR/initrd.img.part.$$" "$GDIR/initrd.img"
  echo "$key" > "$GDIR/key.part.$$"; mv -f "$GDIR/key.part.$$" "$GDIR/key"
  rm -rf "$S"; trap - EXIT
  log "guest initramfs $GDIR/initrd.img ($(du -k "$GDIR/initrd.img" | cut -f1) KiB, $(wc -l < "$GDIR/modules.order") modules)"
fi

log "ready in $((SECONDS - t0)) s"
echo "IBU_ZFS_KVER=$KV"
echo "IBU_ZFS_KERNEL_PKG=$KPKG"
echo "IBU_ZFS_KERNEL_VERSION=$KPKGVER"
echo "IBU_ZFS_VMLINUZ=$KDIR/boot/vmlinuz-$KV"
echo "IBU_ZFS_INITRD=$GDIR/initrd.img"
echo "IBU_ZFS_MODULES_DIR=$MODS"
echo "IBU_ZFS_USERLAND=$USERLAND"
echo "IBU_ZFS_VERSION=$ZFSVER"
echo "IBU_ZFS_UDEV_VERSION=$UDEVVER"
echo "IBU_ZFS_BUILD_SECONDS=${BUILT:-0}"
