#!/usr/bin/env bash
# Installs the system packages ibu's tools and tests use (Debian 12), and Node.js 20 when the
# machine has none or an older one. Idempotent; needs root. Each package is named for what uses it.
# Environment: IBU_TRIXIE_MIRROR (where Node 20 comes from; default http://deb.debian.org/debian).
set -euo pipefail
PKGS=(
  e2fsprogs            # mke2fs -d, e2fsck, debugfs (image build, reader oracle)
  rsync                # layout-stable builds (--previous)
  util-linux           # losetup, fstrim, fsfreeze, mount
  zstd                 # ibu delta make (zstd --patch-from); CLI anchor in benchmarks
  xdelta3              # delta benchmark anchor
  casync               # chunking benchmark anchor
  debootstrap          # Debian roots for benchmarks and e2e images
  mmdebstrap apt-utils # ibu build: roots from locked packages (apt-ftparchive indexes the pool); test/build
  debhelper            # npm run package:device: the ibu-device .deb (packaging/device: dh; dpkg-buildpackage from dpkg-dev below)
  lintian              # test/package/device-deb.test.ts: the ibu-device .deb has no lintian error or warning
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

# Node.js 20: Debian 12 ships 18, Debian 13 (trixie) ships 20. When node is missing or older, add
# trixie at a low pin priority (nothing else is taken from it on its own) and install nodejs and
# npm from there. Trixie's libnode needs trixie's libc6, so this also upgrades libc6, libstdc++6,
# openssl and a few other base libraries to trixie's versions (nodejs alone: about 50 packages;
# with Debian's npm, which is split into many node-* packages: about 400; apt-get -s on Debian 12).
# A machine that must stay pure bookworm installs Node 20 some other way first.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major)" -ge 20 ] && command -v npm >/dev/null; then
  echo "install-deps: node $(node --version) and npm $(npm --version) present"
else
  echo "install-deps: node $(node --version 2>/dev/null || echo missing) (20 needed) or npm missing: installing nodejs and npm from Debian 13 (trixie)"
  cat >/etc/apt/sources.list.d/ibu-trixie-nodejs.sources <<SOURCES
Types: deb
URIs: ${IBU_TRIXIE_MIRROR:-http://deb.debian.org/debian}
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  cat >/etc/apt/preferences.d/ibu-trixie-nodejs <<PREFS
# added by ibu scripts/install-deps.sh: trixie only for what nodejs 20 needs
Package: *
Pin: release n=trixie
Pin-Priority: 100
PREFS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t trixie nodejs npm
  [ "$(node_major)" -ge 20 ] || { echo "install-deps: node is still $(node --version 2>/dev/null || echo missing) after the install" >&2; exit 1; }
fi
