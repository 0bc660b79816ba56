#!/usr/bin/env bash
# Creates (once) and reuses three Debian bookworm root trees that the benchmarks build images from:
#   base      debootstrap minbase + an appliance's packages, all from the bookworm RELEASE pocket
#   security  base + `apt-get upgrade` from bookworm-security and bookworm-updates
#             (same package set, packages upgraded: a real security-update pair)
#   kernel    base + the newer kernel ABI from bookworm-security installed beside the old one,
#             /vmlinuz and /initrd.img pointing at the new kernel (a kernel-update pair)
# Output: $IBU_BENCH_DIR/roots/{base,security,kernel}/ and {security,kernel}.changes.txt
# (the dpkg version changes against base). Idempotent: a finished root has a `.done` stamp
# next to it and is skipped; a half-made one (crash, Ctrl-C) is removed and made again.
# Concurrent callers wait on a lock. Needs root (debootstrap, chroot, mounts).
#
# Usage: bench/lib/debian-roots.sh [base|security|kernel|all]   (default all)
set -euo pipefail

BENCH_DIR=${IBU_BENCH_DIR:-/var/cache/ibu-bench}
ROOTS=$BENCH_DIR/roots
DEBS=$BENCH_DIR/debs            # host-side apt archive cache, bind-mounted into each chroot
MIRROR=${IBU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${IBU_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
# What a small appliance (say a backup box) carries besides minbase. The kernel comes later,
# in the chroot, so that its postinst (initramfs) runs like on a real system.
INCLUDE=systemd-sysv,udev,kmod,initramfs-tools,busybox,openssh-server,e2fsprogs,rsync,curl,ca-certificates,iproute2,ifupdown,isc-dhcp-client,procps,less,zstd,cron,logrotate,sudo,nano

[ "$(id -u)" = 0 ] || { echo "debian-roots: needs root (debootstrap, chroot, mounts)." >&2; exit 1; }
mkdir -p "$ROOTS" "$DEBS"
exec 9>"$ROOTS/.lock"
flock 9

MOUNTED=()
cleanup_mounts() {
  local i
  for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
  MOUNTED=()
}
trap cleanup_mounts EXIT INT TERM

mount_chroot() {
  local r=$1
  mount -t proc proc "$r/proc"; MOUNTED+=("$r/proc")
  mount -t sysfs sysfs "$r/sys"; MOUNTED+=("$r/sys")
  mount --bind /dev "$r/dev"; MOUNTED+=("$r/dev")
  mount --bind /dev/pts "$r/dev/pts"; MOUNTED+=("$r/dev/pts")
  mkdir -p "$r/var/cache/apt/archives"
  mount --bind "$DEBS" "$r/var/cache/apt/archives"; MOUNTED+=("$r/var/cache/apt/archives")
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  # No service may start inside the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
}

unmount_chroot() {
  local r=$1
  rm -f "$r/usr/sbin/policy-rc.d"
  cleanup_mounts
  # No .debs inside the root: the ones apt used stayed in $DEBS on the host side (the bind
  # mount), but debootstrap leaves its own under the mount point.
  rm -f "$r"/var/cache/apt/archives/*.deb
  rm -rf "$r"/var/cache/apt/archives/partial/*
  # apt's lists are 40+ MB of noise for an image; the debs stayed on the host side.
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
  mkdir -p "$r/var/lib/apt/lists/partial"
  : >"$r/etc/resolv.conf"
}

in_chroot() {
  local r=$1; shift
  chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 HOME=/root "$@"
}

write_sources() {
  local r=$1 pockets=$2
  rm -f "$r/etc/apt/sources.list"
  {
    echo "Types: deb"; echo "URIs: $MIRROR"; echo "Suites: $SUITE$([ "$pockets" = all ] && echo " $SUITE-updates")"
    echo "Components: main"; echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ "$pockets" = all ]; then
      echo; echo "Types: deb"; echo "URIs: $SECURITY_MIRROR"; echo "Suites: $SUITE-security"
      echo "Components: main"; echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    fi
  } >"$r/etc/apt/sources.list.d/debian.sources"
}

# Point /vmlinuz and /initrd.img at the newest installed kernel (relative links, resolved inside).
link_kernel() {
  local r=$1 k
  k=$(cd "$r/boot" && ls vmlinuz-* | sort -V | tail -1); k=${k#vmlinuz-}
  ln -sfn "boot/vmlinuz-$k" "$r/vmlinuz"
  ln -sfn "boot/initrd.img-$k" "$r/initrd.img"
  [ -e "$r/boot/initrd.img-$k" ] || { echo "debian-roots: no initrd for $k" >&2; exit 1; }
}

pkg_versions() { in_chroot "$1" dpkg-query -W -f='${Package} ${Version}\n' | sort; }

record_changes() {
  local name=$1
  join -a1 -a2 -e '-' -o 0,1.2,2.2 <(pkg_versions "$ROOTS/base") <(pkg_versions "$ROOTS/$name.tmp") \
    | awk '$2 != $3 { print $1, $2, "->", $3 }' >"$ROOTS/$name.changes.txt"
  echo "debian-roots: $name: $(wc -l <"$ROOTS/$name.changes.txt") packages differ from base (see $ROOTS/$name.changes.txt)"
}

finish() {
  local name=$1
  rm -rf "$ROOTS/$name"
  mv "$ROOTS/$name.tmp" "$ROOTS/$name"
  du -s --apparent-size -B1 "$ROOTS/$name" | cut -f1 >"$ROOTS/$name.done"
  echo "debian-roots: $name ready at $ROOTS/$name ($(numfmt --to=iec <"$ROOTS/$name.done") apparent)"
}

make_base() {
  [ -f "$ROOTS/base.done" ] && { echo "debian-roots: base exists, skipped"; return; }
  local r=$ROOTS/base.tmp
  rm -rf "$r"
  echo "debian-roots: debootstrap $SUITE minbase into $r"
  nice debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$DEBS" "$SUITE" "$r" "$MIRROR" >"$ROOTS/base.log" 2>&1 \
    || { tail -20 "$ROOTS/base.log" >&2; exit 1; }
  # Appliances drop docs, man pages and translations; dpkg honours this on every later upgrade too.
  cat >"$r/etc/dpkg/dpkg.cfg.d/01-appliance-nodoc" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
CFG
  find "$r/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* 2>/dev/null || true
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  write_sources "$r" release
  echo "appliance" >"$r/etc/hostname"
  mount_chroot "$r"
  in_chroot "$r" apt-get update -qq
  echo "debian-roots: installing the release kernel (initramfs under chroot takes a minute)"
  in_chroot "$r" nice apt-get install -y -qq --no-install-recommends linux-image-amd64 >>"$ROOTS/base.log" 2>&1 \
    || { tail -20 "$ROOTS/base.log" >&2; exit 1; }
  unmount_chroot "$r"
  link_kernel "$r"
  finish base
}

copy_base() {
  local r=$ROOTS/$1.tmp
  rm -rf "$r"
  cp -a "$ROOTS/base" "$r"
}

make_security() {
  [ -f "$ROOTS/security.done" ] && { echo "debian-roots: security exists, skipped"; return; }
  make_base
  local r=$ROOTS/security.tmp
  copy_base security
  write_sources "$r" all
  mount_chroot "$r"
  in_chroot "$r" apt-get update -qq
  echo "debian-roots: security: apt-get upgrade from $SUITE-security + $SUITE-updates"
  # `upgrade` never installs new packages: the kernel meta-package stays back, the set stays the same.
  in_chroot "$r" nice apt-get upgrade -y -qq -o Dpkg::Options::=--force-confold >"$ROOTS/security.log" 2>&1 \
    || { tail -20 "$ROOTS/security.log" >&2; exit 1; }
  record_changes security
  unmount_chroot "$r"
  finish security
}

make_kernel() {
  [ -f "$ROOTS/kernel.done" ] && { echo "debian-roots: kernel exists, skipped"; return; }
  make_base
  local r=$ROOTS/kernel.tmp
  copy_base kernel
  write_sources "$r" all
  mount_chroot "$r"
  in_chroot "$r" apt-get update -qq
  echo "debian-roots: kernel: installing the $SUITE-security kernel beside the release one"
  # Upgrading only the meta-package pulls the new ABI package (a new name) beside the old one.
  in_chroot "$r" nice apt-get install -y -qq --no-install-recommends --only-upgrade linux-image-amd64 >"$ROOTS/kernel.log" 2>&1 \
    || { tail -20 "$ROOTS/kernel.log" >&2; exit 1; }
  record_changes kernel
  unmount_chroot "$r"
  link_kernel "$r"
  [ "$(ls "$r"/boot/vmlinuz-* | wc -l)" -ge 2 ] || { echo "debian-roots: kernel root has only one kernel" >&2; exit 1; }
  finish kernel
}

case "${1:-all}" in
  base) make_base ;;
  security) make_security ;;
  kernel) make_kernel ;;
  all) make_base; make_security; make_kernel ;;
  *) echo "usage: $0 [base|security|kernel|all]" >&2; exit 2 ;;
esac
