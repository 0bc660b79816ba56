#!/usr/bin/env bash
# Installs the system packages ibu's tools and tests use (Debian 12). Idempotent; needs root.
# Each package is named for what uses it.
set -euo pipefail
PKGS=(
  e2fsprogs            # mke2fs -d, e2fsck, debugfs (image build, reader oracle)
  rsync                # layout-stable builds (--previous)
  util-linux           # losetup, fstrim, fsfreeze, mount
  zstd                 # ibu delta make (zstd --patch-from); CLI anchor in benchmarks
  xdelta3              # delta benchmark anchor
  casync               # chunking benchmark anchor
  debootstrap          # Debian roots for benchmarks and e2e images
  busybox-static       # initramfs and test images
  cpio                 # initramfs archives
  initramfs-tools-core # mkinitramfs: e2e proof of assets/initramfs-tools (hook + boot=ibu)
  qemu-system-x86      # e2e boots under TCG
  ovmf                 # UEFI firmware for e2e
  grub-efi-amd64-bin   # GRUB EFI modules for e2e disks
  grub-pc-bin          # GRUB BIOS modules
  grub-common          # grub-editenv
  systemd              # systemd-analyze verify of assets/systemd units (agent tests)
  mtools dosfstools    # ESP without mounting
  fdisk                # sfdisk for GPT layouts
  python3              # node-gyp for native addons
  make g++             # node-gyp
  postgresql           # fleet repository tests against a real PostgreSQL (scripts/postgres.sh)
  chromium             # fleet dashboard e2e test (headless, driven by playwright-core)
  dkms kmod            # ZFS tests: build zfs-dkms for the guest kernel (scripts/zfs-setup.sh; nothing installed into the host kernel)
  gcc-12 libc6-dev dpkg-dev perl file lsb-release libelf1  # ZFS tests: what dkms needs to build against Debian's unpacked kernel headers
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all system packages present"
fi
