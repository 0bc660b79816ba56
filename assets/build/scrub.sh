#!/bin/sh
# mmdebstrap customize hook, last of ibu build's hooks: makes the root reproducible and
# appliance-ready. $1 = root dir. Environment: IBU_HOSTNAME, IBU_SOURCES (a deb822 sources file
# naming the spec's mirrors, which replaces the build-time sources), IBU_KERNEL (1: the spec has a
# kernel). Adapted from the proven recipe in ../shared/buildlab (hooks/customize.sh), whose
# README lists each cause and how it was found.
set -eu
R="$1"
# 1. canonical apt sources: the spec's mirrors, never the pool's copy:// source used to build
rm -f "$R/etc/apt/sources.list" "$R"/etc/apt/sources.list.d/*
mkdir -p "$R/etc/apt/sources.list.d"
cp "$IBU_SOURCES" "$R/etc/apt/sources.list.d/debian.sources"; chmod 0644 "$R/etc/apt/sources.list.d/debian.sources"
# 1b. a read-only image (readonly: true): the marker the initramfs and the agent look for
if [ "${IBU_READONLY:-0}" = 1 ]; then
  mkdir -p "$R/usr/lib/ibu"
  printf 'readonly\n' > "$R/usr/lib/ibu/readonly"; chmod 0644 "$R/usr/lib/ibu/readonly"
fi
# 2. host leaks: mmdebstrap copies the build host's /etc/hostname and /etc/resolv.conf
printf '%s\n' "$IBU_HOSTNAME" > "$R/etc/hostname"; chmod 0644 "$R/etc/hostname"
rm -f "$R/etc/resolv.conf"
# 3. ssh host keys are random: never baked in. trixie's sshd-keygen.service (ssh-keygen -A) has
#    ConditionFirstBoot=yes, but an empty /etc/machine-id is not a first boot (machine-id(5));
#    make it run whenever keys are missing (ssh-keygen -A only creates missing keys).
rm -f "$R"/etc/ssh/ssh_host_*
if [ -d "$R/etc/ssh" ]; then
  mkdir -p "$R/etc/systemd/system/sshd-keygen.service.d"
  cat > "$R/etc/systemd/system/sshd-keygen.service.d/always.conf" <<'S'
[Unit]
# reset conditions (drops ConditionFirstBoot=yes), re-add the safe ones
ConditionFirstBoot=
ConditionPathIsReadWrite=/etc/ssh
ConditionPathIsSymbolicLink=!/etc/ssh
S
fi
# 4. machine-id: mmdebstrap's cleanup/reproducible truncates /etc/machine-id to empty after this hook.
# 5. build-time state, caches, logs (mmdebstrap removes most; belt and braces)
rm -f "$R/var/cache/ldconfig/aux-cache" "$R/var/log/dpkg.log" "$R/var/log/alternatives.log" \
      "$R"/var/log/apt/*.log "$R/var/log/apt/eipp.log.xz" "$R/var/lib/dbus/machine-id" \
      "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old "$R/var/lib/systemd/random-seed" \
      "$R"/etc/passwd- "$R"/etc/group- "$R"/etc/shadow- "$R"/etc/gshadow- "$R"/etc/subuid- "$R"/etc/subgid-
rm -rf "$R"/var/cache/man/* 2>/dev/null || true
find "$R" -xdev -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
# 6. the boot entry points the image builder needs: /vmlinuz and /initrd.img, relative links
if [ "${IBU_KERNEL:-0}" = 1 ]; then
  for f in vmlinuz initrd.img; do
    if [ ! -e "$R/$f" ]; then
      t=$(cd "$R/boot" && ls -1 $f-* 2>/dev/null | LC_ALL=C sort -V | tail -n 1)
      [ -n "$t" ] && ln -sfn "boot/$t" "$R/$f"
    fi
  done
fi
# 7. stamp /etc/.updated and /var/.updated as systemd-update-done does (its file, TIMESTAMP_NSEC =
#    /usr's mtime): every inode of the image gets mtime SOURCE_DATE_EPOCH with zero nanoseconds
#    (src/image/pin-metadata.ts), so /usr is not newer and ConditionNeedsUpdate= is false on the
#    image's first boot by any method: ldconfig, the journal catalog update and update-done itself
#    do not run on every trial boot (docs/benchmarks.md, issue #18 item 7).
for d in etc var; do
  mkdir -p "$R/$d"
  printf '%s\n' '# This file was created by systemd-update-done. Its only ' \
    '# purpose is to hold a timestamp of the time this directory' \
    '# was updated. See man:systemd-update-done.service(8).' \
    "TIMESTAMP_NSEC=${SOURCE_DATE_EPOCH:-1577836800}000000000" > "$R/$d/.updated"
  chmod 0644 "$R/$d/.updated"
done
exit 0
