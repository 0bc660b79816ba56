#!/usr/bin/env bash
# mkinitramfs-tools.sh KERNEL_DIR KVER OUT -- a Debian initramfs-tools initramfs with the ibu hook
# and boot script (assets/initramfs-tools), for a kernel that is only EXTRACTED (the .deb from
# scripts/e2e-setup.sh), not installed: mkinitramfs reads /lib/modules/KVER, so it runs in a
# private mount namespace where an overlay on /usr/lib shows the extracted modules there. The
# host's /usr/lib and /boot are never written. Needs root and initramfs-tools-core.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
[ $# = 3 ] || { echo "usage: $0 KERNEL_DIR KVER OUT" >&2; exit 2; }
kdir=$1 kver=$2 out=$3
command -v mkinitramfs >/dev/null || { echo "mkinitramfs missing: install initramfs-tools-core (scripts/install-deps.sh)" >&2; exit 1; }
[ -d "$kdir/lib/modules/$kver" ] || { echo "no $kdir/lib/modules/$kver" >&2; exit 1; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
conf=$t/conf
mkdir -p "$conf/hooks" "$conf/scripts" "$conf/conf.d" "$t/upper" "$t/work"
cp "$ROOT/assets/initramfs-tools/hooks/ibu" "$conf/hooks/ibu"
cp "$ROOT/assets/initramfs-tools/scripts/ibu" "$conf/scripts/ibu"
# MODULES=list: only what the VM needs, so the test initramfs stays small. BUSYBOX=n: klibc's sh
# and tools only, as on the appliance (trixie's initramfs-tools with busybox not installed), so
# the boot script is proven where it has the fewest tools (assets/initramfs is the busybox flavour)
cat > "$conf/initramfs.conf" <<CONF
MODULES=list
BUSYBOX=n
KEYMAP=n
COMPRESS=gzip
RUNSIZE=10%
FSTYPE=auto
CONF
printf '%s\n' virtio_pci virtio_blk ext4 loop crc32c_generic > "$conf/modules"
unshare -m --propagation private sh -ec "
  mount -t overlay ibu-e2e-lib -o lowerdir=/usr/lib,upperdir=$t/upper,workdir=$t/work /usr/lib
  mkdir -p /usr/lib/modules/$kver
  mount --bind '$kdir/lib/modules/$kver' /usr/lib/modules/$kver
  mount --bind '$kdir/boot' /boot      # config-KVER: mkinitramfs checks the compressor
  IBU_BOOT_LIB='$ROOT/assets/initramfs/ibu-boot.sh' mkinitramfs -d '$conf' -o '$out.tmp' $kver
"
mv "$out.tmp" "$out"
echo "mkinitramfs-tools: $out ($(stat -c %s "$out") bytes)"
