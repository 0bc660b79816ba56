#!/bin/busybox sh
# /init of the ZFS test guest's initramfs (built by scripts/zfs-setup.sh). Loads the kernel
# modules (etc/ibu-zfs/modules, in order; ZFS last), then builds the guest's root:
#   an overlay of  [the ZFS userland layer (9p tag zfsuser)]  over  [the host's root (9p tag
#   hostroot, read-only)],  with its writable upper layer on the scratch disk /dev/vda (ext4),
# mounts /share (9p tag share, read-write) and switches to that root, running the harness's
# stage 2 (test/zfs/guest-stage2.sh, copied into the control dir ibu.ctl=<host path>) as PID 1.
# Kernel command line: ibu.ctl=<host dir>  ibu.arc_max=<bytes>
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
up() { cut -d' ' -f1 /proc/uptime; }
fail() {
  echo "IBU-ZFS FAIL $* (uptime $(up)s)"
  sync
  poweroff -f
  echo o > /proc/sysrq-trigger
}
arg() { for w in $(cat /proc/cmdline); do case $w in "$1"=*) echo "${w#*=}"; return;; esac; done; }
kv=$(uname -r)
[ "$kv" = "$(cat /etc/ibu-zfs/kver)" ] || fail "kernel $kv booted, the initramfs is for $(cat /etc/ibu-zfs/kver)"
arc=$(arg ibu.arc_max)
for ko in $(cat /etc/ibu-zfs/modules); do
  params=
  case $ko in */zfs.ko) [ -n "$arc" ] && params="zfs_arc_max=$arc" ;; esac
  # shellcheck disable=SC2086
  insmod "/lib/modules/$kv/$ko" $params || fail "insmod $ko failed"
done
echo "IBU-ZFS modules loaded (uptime $(up)s): zfs $(cat /sys/module/zfs/version)"

o=trans=virtio,version=9p2000.L,msize=262144
# cache=loose: the host's root does not change under a running test (inputs go through /share)
mount -t 9p -o "$o,ro,cache=loose" hostroot /host || fail "cannot mount the host's root (9p tag hostroot)"
mount -t 9p -o "$o,ro,cache=loose" zfsuser /zfsuser || fail "cannot mount the ZFS userland (9p tag zfsuser)"
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o noinit_itable /dev/vda /scratch || fail "cannot mount the scratch disk /dev/vda"
mkdir -p /scratch/upper /scratch/work
mount -t overlay overlay -o lowerdir=/zfsuser:/host,upperdir=/scratch/upper,workdir=/scratch/work /newroot ||
  fail "cannot mount the overlay root"
mkdir -p /newroot/share
# cache=mmap: shared writable mmap works (e.g. SQLite), and sync writes everything through
mount -t 9p -o "$o,cache=mmap" share /newroot/share || fail "cannot mount /share (9p tag share)"
ctl=$(arg ibu.ctl)
[ -f "/newroot$ctl/stage2.sh" ] || fail "no stage 2 at $ctl/stage2.sh"
# the guest kernel's modules, for lsmod/modinfo/modprobe in the guest
mkdir -p "/newroot/lib/modules" && cp -a "/lib/modules/$kv" /newroot/lib/modules/
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/bash "$ctl/stage2.sh"
