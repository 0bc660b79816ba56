#!/usr/bin/env bash
# make-conventional-disk.sh -- a Debian 12 machine installed the ordinary way, as an installer
# would leave it, for the adoption tests (test/e2e/adopt.test.ts):
#   --firmware bios: MBR, one ext4 root partition (bootable), grub-pc: `grub-install /dev/loopN`
#   --firmware efi:  GPT, an ESP (FAT32) and an ext4 root partition, grub-efi-amd64
# debootstrapped with mmdebstrap (minbase + systemd, the distribution kernel, ifupdown, openssh),
# /etc/fstab, /etc/default/grub (serial console), then `update-grub` inside a chroot.
#
#   make-conventional-disk.sh --firmware bios|efi --out DISK      (prints ROOT_OFFSET=<bytes> ROOT_UUID=<uuid>)
#
# The built disk is cached in $IBU_E2E_CACHE/adopt (default /var/cache/ibu-e2e/adopt) keyed by this
# script and the package list, so only a change of either rebuilds it (~3 min + the download).
# Known gap, said plainly: this host's kernel has no vfat driver, so for EFI the step of grub-install
# that writes the ESP cannot run; the same core image (grub-mkimage, prefix search by fs UUID, the
# modules copied to /boot/grub/x86_64-efi) is made in the chroot and copied with mtools.
set -euo pipefail
FW= OUT=
while [ $# -gt 0 ]; do
  case $1 in
  --firmware) FW=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  *) echo "make-conventional-disk: unknown argument $1" >&2; exit 2 ;;
  esac
done
case $FW in efi) GRUBPKG=grub-efi-amd64 ;; bios) GRUBPKG=grub-pc ;; *) echo "make-conventional-disk: --firmware bios|efi" >&2; exit 2 ;; esac
[ -n "$OUT" ] || { echo "make-conventional-disk: --out DISK" >&2; exit 2; }
CACHE=${IBU_E2E_CACHE:-/var/cache/ibu-e2e}/adopt
ROOT_UUID=b00c4e11-0000-4000-8000-00000000d0d0
PKGS="systemd-sysv,udev,linux-image-amd64,initramfs-tools,$GRUBPKG,ifupdown,openssh-server,e2fsprogs,kmod,iproute2,passwd"
KEY=$( { cat "$0"; echo "$PKGS"; } | sha256sum | cut -c1-16)
TKEY=$(echo "$PKGS" | sha256sum | cut -c1-16)   # the debootstrap tarball: the package list only
DISK=$CACHE/bookworm-$FW-$KEY.img
SIZE_MIB=${IBU_ADOPT_DISK_MIB:-2048}
if [ "$FW" = efi ]; then ROOT_START=$(( (1 + 64) * 2048 )); else ROOT_START=2048; fi
mkdir -p "$CACHE"

build() {
  local tar=$CACHE/bookworm-$FW-$TKEY.tar tmp=$DISK.tmp
  mnt= loop=
  if [ ! -f "$tar" ]; then
    # --format: mmdebstrap guesses the format from the name, and "*.tmp" made it a directory
    rm -rf "$tar" "$tar.tmp"
    mmdebstrap --variant=minbase --format=tar --include="$PKGS" bookworm "$tar.tmp" http://deb.debian.org/debian
    mv "$tar.tmp" "$tar"
  fi
  mnt=$(mktemp -d /tmp/ibu-conv-XXXXXX)
  cleanup() {
    rm -f "/dev/disk/by-uuid/$ROOT_UUID"
    for m in dev/pts dev proc sys ""; do umount "$mnt/$m" 2>/dev/null || true; done
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    rmdir "$mnt" 2>/dev/null || true
  }
  trap cleanup EXIT
  rm -f "$tmp"; truncate -s "${SIZE_MIB}M" "$tmp"
  if [ "$FW" = efi ]; then
    sfdisk -q "$tmp" <<EOT
label: gpt
start=2048, size=$((64 * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"
start=$ROOT_START, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
EOT
  else
    sfdisk -q "$tmp" <<EOT
label: dos
start=$ROOT_START, type=83, bootable
EOT
  fi
  loop=$(losetup --find --show --partscan "$tmp")
  # no udev here: tell the kernel about the partitions, then make their nodes from sysfs
  partx -a "$loop" 2>/dev/null || true
  for p in /sys/block/"${loop#/dev/}"/"${loop#/dev/}"p*; do
    [ -e "$p/dev" ] || continue
    [ -b "/dev/${p##*/}" ] || mknod "/dev/${p##*/}" b "$(cut -d: -f1 "$p/dev")" "$(cut -d: -f2 "$p/dev")"
  done
  local rootdev=${loop}p1; [ "$FW" = efi ] && rootdev=${loop}p2
  mke2fs -q -F -t ext4 -U "$ROOT_UUID" -L root "$rootdev"
  # what udev would make: update-grub writes root=UUID=... only when /dev/disk/by-uuid has it
  mkdir -p /dev/disk/by-uuid
  ln -sfn "$rootdev" "/dev/disk/by-uuid/$ROOT_UUID"
  mount "$rootdev" "$mnt"
  tar -C "$mnt" -xpf "$tar"
  echo bookworm-conventional > "$mnt/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 bookworm-conventional\n' > "$mnt/etc/hosts"
  printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$ROOT_UUID" > "$mnt/etc/fstab"
  if [ "$FW" = efi ]; then
    mkfs.vfat -F 32 -n ESP "${loop}p1" >/dev/null
    echo "UUID=$(blkid -s UUID -o value "${loop}p1") /boot/efi vfat umask=0077,nofail 0 1" >> "$mnt/etc/fstab"
    mkdir -p "$mnt/boot/efi"
  fi
  # QEMU user networking (restrict=on): a fixed address; the tests' server is 10.0.2.100
  printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n  address 10.0.2.15/24\n' > "$mnt/etc/network/interfaces"
  echo 'root:adopt' | chroot "$mnt" chpasswd
  sed -i -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=1/' -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT=""/' \
    -e 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=ttyS0,115200 net.ifnames=0 no_timer_check"/' "$mnt/etc/default/grub"
  printf 'GRUB_TERMINAL=serial\nGRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\nGRUB_DISABLE_OS_PROBER=true\n' >> "$mnt/etc/default/grub"
  mount --bind /dev "$mnt/dev"; mount --bind /dev/pts "$mnt/dev/pts"; mount -t proc proc "$mnt/proc"; mount -t sysfs sys "$mnt/sys"
  if [ "$FW" = bios ]; then
    chroot "$mnt" grub-install --target=i386-pc "$loop"
  else
    # what grub-install --removable does, without mounting the ESP (see the header)
    mkdir -p "$mnt/boot/grub/x86_64-efi"
    cp -a "$mnt"/usr/lib/grub/x86_64-efi/*.mod "$mnt"/usr/lib/grub/x86_64-efi/*.lst "$mnt/boot/grub/x86_64-efi/"
    printf 'search.fs_uuid %s root\nset prefix=($root)/boot/grub\n' "$ROOT_UUID" > "$mnt/tmp/load.cfg"
    chroot "$mnt" grub-mkimage -O x86_64-efi -o /tmp/BOOTX64.EFI -c /tmp/load.cfg -p /boot/grub part_gpt part_msdos ext2 search_fs_uuid
    mmd -i "${loop}p1" ::/EFI ::/EFI/BOOT
    mcopy -i "${loop}p1" "$mnt/tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
    rm -f "$mnt/tmp/BOOTX64.EFI" "$mnt/tmp/load.cfg"
  fi
  chroot "$mnt" update-grub
  rm -rf "$mnt/var/cache/apt/archives/"*.deb
  sync
  cleanup
  trap - EXIT
  mv "$tmp" "$DISK"
}
[ -f "$DISK" ] || build >&2
cp --sparse=always "$DISK" "$OUT"
echo "ROOT_OFFSET=$((ROOT_START * 512))"
echo "ROOT_UUID=$ROOT_UUID"
