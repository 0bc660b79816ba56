#!/usr/bin/env bash
# build-initramfs.sh -- the small ibu initramfs: busybox-static, e2fsck.static, a few kernel
# modules loaded in a fixed order, /init (assets/initramfs/init) and the shared loop= logic
# (assets/initramfs/ibu-boot.sh). A reproducible gzip'd newc cpio (sorted, owner 0:0, mtime 0).
#
#   build-initramfs.sh --modules-dir DIR --e2fsck FILE --out FILE [--busybox FILE] [--extra-modules "m1 m2"] [--verity]
#
#   --modules-dir  lib/modules/<kver> of the kernel (e.g. extracted from the linux-image .deb)
#   --e2fsck       a static e2fsck (package e2fsck-static: /sbin/e2fsck.static)
#   --busybox      a static busybox (default /bin/busybox from busybox-static)
#   --verity       dm-verity and read-only roots (docs/boot.md): the host's veritysetup with its
#                  shared libraries and loader (package cryptsetup-bin), and the modules dm-mod,
#                  dm-bufio, dm-verity (with reed_solomon) and overlay. About 6 MB more.
# Needs root (mknod /dev/console: the kernel opens it before /init runs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# Load order matters and the .deb has no modules.dep for busybox to use:
# crc32c_generic first -- ext4/jbd2 only name it as a softdep, and without it mounting ext4
# fails with a misleading "No such file or directory" (TCG's CPU has no crc32c instruction).
MODULES="crc32c_generic crc16 mbcache jbd2 ext4 loop virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk"
VERITY_MODULES="reed_solomon dm-mod dm-bufio dm-verity overlay"
BUSYBOX=/bin/busybox MODDIR= E2FSCK= OUT= EXTRA= VERITY=
die() { echo "build-initramfs: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
  --modules-dir) MODDIR=$2; shift 2 ;;
  --e2fsck) E2FSCK=$2; shift 2 ;;
  --busybox) BUSYBOX=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --extra-modules) EXTRA=$2; shift 2 ;;
  --verity) VERITY=1; shift ;;
  *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[ -n "$MODDIR" ] && [ -d "$MODDIR/kernel" ] || die "--modules-dir must be a lib/modules/<kver> directory with kernel/ in it"
[ -n "$E2FSCK" ] && [ -x "$E2FSCK" ] || die "--e2fsck must name a static e2fsck (package e2fsck-static)"
[ -n "$OUT" ] || die "--out FILE is required"
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: install busybox-static"
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked: install busybox-static"; fi
if ldd "$E2FSCK" >/dev/null 2>&1; then die "$E2FSCK is dynamically linked: use e2fsck.static"; fi
KVER=$(basename "$MODDIR")

ROOT=$(mktemp -d "${OUT}.root.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,dev,proc,sys,host,root,etc,tmp,lib/ibu,"lib/modules/$KVER"}
ln -s bin "$ROOT/sbin"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -s busybox "$ROOT/bin/$a"; done
cp "$E2FSCK" "$ROOT/bin/e2fsck"
ln -sf e2fsck "$ROOT/bin/fsck.ext4"
if [ -n "$VERITY" ]; then
  VS=$(command -v veritysetup) || die "--verity needs veritysetup on this machine (package cryptsetup-bin)"
  # a dynamic binary: copy it with every library ldd names, and the loader, at their own paths
  cp "$VS" "$ROOT/bin/veritysetup"
  for lib in $(ldd "$VS" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}'); do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
  done
  EXTRA="$EXTRA $VERITY_MODULES"
fi
loaded=" "
for m in $MODULES $EXTRA; do
  f=$(find "$MODDIR/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) -print -quit)
  [ -n "$f" ] || die "module $m not found under $MODDIR (built in or renamed in this kernel?)"
  case $f in *.ko) ;; *) die "$f is compressed; busybox insmod needs plain .ko files" ;; esac
  # no modules.dep in the initramfs: every dependency must come earlier in the list
  for d in $(tr '\0' '\n' < "$f" | LC_ALL=C sed -n 's/^depends=//p' | tr ',' ' '); do
    case "$loaded" in *" $d "*) ;; *) die "module $m needs $d loaded first: fix the order in MODULES" ;; esac
  done
  loaded="$loaded$m "
  cp "$f" "$ROOT/lib/modules/$KVER/"
  echo "$m" >> "$ROOT/etc/modules-load"
done
ln -s /proc/mounts "$ROOT/etc/mtab"
# the guest clock may be unset: do not let e2fsck -p stop on "last mount time is in the future"
printf '[options]\n\tbroken_system_clock = 1\n' > "$ROOT/etc/e2fsck.conf"
mknod -m 600 "$ROOT/dev/console" c 5 1
install -m 755 "$HERE/init" "$ROOT/init"
install -m 644 "$HERE/ibu-boot.sh" "$ROOT/lib/ibu/ibu-boot.sh"
find "$ROOT" -exec touch -h -d @0 {} +
tmp=$OUT.tmp.$$
(cd "$ROOT" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9n > "$tmp"
mv "$tmp" "$OUT"
echo "build-initramfs: $OUT ($(stat -c %s "$OUT") bytes, kernel $KVER, modules:$loaded)"
