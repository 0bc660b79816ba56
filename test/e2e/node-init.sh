#!/bin/sh
# /sbin/init of the e2e images that carry Node and the ibu project (test/e2e/stage-node-root.sh).
# Sets up what upgradectl needs (proc, sys, dev, tmpfs, RNG, network when QEMU gives a NIC),
# then runs the scenario's script: /host/ibu-e2e/run.sh when the test put one on the host
# partition (so scenarios drive the guest without rebuilding images), else the image's own
# /etc/ibu-e2e/run.sh, else `upgradectl --help`. Then syncs and powers off.
export PATH=/usr/bin:/bin:/sbin HOME=/root NO_COLOR=1
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
up() { cut -d' ' -f1 /proc/uptime; }
kmods=/lib/modules/$(uname -r)
# getrandom() blocks node until the CRNG is seeded: QEMU's virtio-rng seeds it at once
insmod $kmods/virtio-rng.ko 2>/dev/null
if [ -d /sys/bus/pci/drivers ] && grep -qs 0x1000 /sys/bus/pci/devices/*/device; then
  for m in failover net_failover virtio_net; do insmod $kmods/$m.ko; done
  ip link set lo up
  # QEMU user networking, restrict=on: only the guestfwd address 10.0.2.100 leads anywhere
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && echo "IBU-E2E net: eth0 10.0.2.15/24 up=$(up)s"
fi
version=$(cat /etc/ibu-e2e/version)
case " $(cat /proc/cmdline) " in *" ibu.trial=1 "*) trial=1 ;; *) trial=0 ;; esac
export IBU_E2E_VERSION=$version IBU_E2E_TRIAL=$trial
echo "IBU-E2E RUNNING version=$version trial=$trial node=$(node --version) up=$(up)s"
if [ -f /host/ibu-e2e/run.sh ]; then
  echo "IBU-E2E script: /host/ibu-e2e/run.sh"
  sh /host/ibu-e2e/run.sh
elif [ -f /etc/ibu-e2e/run.sh ]; then
  sh /etc/ibu-e2e/run.sh
else
  node /opt/ibu/bin/upgradectl --help
fi
echo "IBU-E2E script exit status $? up=$(up)s"
echo "IBU-E2E POWEROFF version=$version"
sync
mount -o remount,ro /host 2>/dev/null   # checkpoint the host journal for GRUB and the next fsck
poweroff -f
