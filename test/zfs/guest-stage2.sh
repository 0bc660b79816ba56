#!/bin/bash
# Stage 2 of the ZFS test guest, PID 1 on the overlay root (the host's own tools, the ZFS userland
# layer on top, writes going to the scratch disk). Started by test/zfs/guest-init.sh from the
# control dir the harness (test/zfs/harness.ts) wrote: stage2.sh, script.sh, env.sh.
# Mounts what a Debian system has, brings up lo, starts udevd (whole-disk `zpool create` waits for
# udev to report the partitions it made; 60-zvol.rules makes /dev/zvol/...), prints
#   IBU-ZFS READY ...   then runs script.sh in /share with bash, then   IBU-ZFS EXIT <status>
# and powers off. Nothing here may hang: the harness kills QEMU at its timeout anyway.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 TERM=dumb
ctl=$(dirname "$(readlink -f "$0")")
up() { cut -d' ' -f1 /proc/uptime; }
off() {
  sync
  busybox poweroff -f 2> /dev/null
  echo 1 > /proc/sys/kernel/sysrq; echo o > /proc/sysrq-trigger
  sleep 10
}
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /run/udev
ln -sfn /proc/self/mounts /etc/mtab
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
hostname ibu-zfs-guest 2> /dev/null
ip link set lo up 2> /dev/null || busybox ip link set lo up
# node resolves "localhost" through /etc/hosts (the guest has no DNS)
grep -qw localhost /etc/hosts 2> /dev/null || echo '127.0.0.1 localhost' >> /etc/hosts
udevd=/usr/lib/systemd/systemd-udevd; [ -x "$udevd" ] || udevd=/lib/systemd/systemd-udevd
if "$udevd" --daemon --resolve-names=never; then
  # only what the tests need replayed: the disks (by-id links, partitions) and /dev/zfs; new
  # devices (zpool's partitions, zvols, loop devices) get their events from the running udevd
  udevadm trigger --action=add --subsystem-match=block --subsystem-match=misc
  udevadm settle -t 60 || echo "IBU-ZFS udevadm settle timed out"
else
  echo "IBU-ZFS udevd did not start: whole-disk zpool create and /dev/zvol links will not work"
fi
zv=$(zfs version 2>&1 | tr '\n' ' ')
echo "IBU-ZFS READY uptime=$(up)s kernel=$(uname -r) zfs=[$zv] node=$(node --version 2>&1) disks=$(cd /sys/block && echo vd* | tr ' ' ,)"
set -a
# shellcheck disable=SC1091
. "$ctl/env.sh"
set +a
cd /share || off
bash "$ctl/script.sh" < /dev/null
rc=$?
cd /
echo "IBU-ZFS EXIT $rc uptime=$(up)s"
off
