#!/bin/sh
# /sbin/init of the busybox test images (test/e2e). Prints markers the tests look for in the
# serial log, then powers off. /etc/ibu-e2e/variant selects the behaviour:
#   good     run, print facts, power off
#   commit   like good; on a trial boot (ibu.trial=1) commit itself: rewrite both copies of the
#            host's grubenv IN PLACE (same inodes and blocks), the way the agent does
#   panic    crash the kernel (sysrq-c): a bad update that never reaches userspace health checks
#   nomark   like good, but never marks the boot good (GRUB keeps counting its boots)
#   verity   like good, plus a health check that reads /usr/share/ibu-e2e/payload.bin whole (a
#            block dm-verity finds rotten reads as EIO: the check fails, the boot is not marked
#            good and the guest reboots, so GRUB falls back), and facts of the read-only root:
#            the /etc and /var overlays, a write to /, a write to /etc and /var (test/e2e/verity.test.ts)
export PATH=/bin:/sbin
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /sys ' /proc/mounts || mount -t sysfs sysfs /sys
version=$(cat /etc/ibu-e2e/version)
variant=$(cat /etc/ibu-e2e/variant)
cmd=" $(cat /proc/cmdline) "
case "$cmd" in *" ibu.trial=1 "*) trial=1 ;; *) trial=0 ;; esac

if [ "$variant" = panic ]; then
  echo "IBU-E2E BROKEN version=$version: kernel panic via sysrq (simulated bad update)"
  echo c > /proc/sysrq-trigger
  sleep 30
fi

echo "IBU-E2E RUNNING version=$version trial=$trial"
echo "IBU-E2E root: $(grep ' / ' /proc/mounts | tail -n 1)"
echo "IBU-E2E host: $(grep ' /host ' /proc/mounts)"
echo "IBU-E2E cmdline:$cmd"

# unmounts the overlays whose upper dirs live on /host, so /host can be remounted read-only
release_state() { umount /var 2>/dev/null; umount /etc 2>/dev/null; }

if [ "$variant" = verity ]; then
  echo "IBU-E2E etc: $(grep ' /etc ' /proc/mounts)"
  echo "IBU-E2E var: $(grep ' /var ' /proc/mounts)"
  echo "IBU-E2E hostname: $(cat /etc/hostname 2>&1)"
  echo "IBU-E2E rootwrite: $(touch /ibu-rw-test 2>&1 && echo written)"
  echo "$version" >> /etc/ibu-e2e/boots && echo "IBU-E2E etcwrite: ok"
  mkdir -p /var/lib/ibu-e2e && echo "$version" >> /var/lib/ibu-e2e/boots && echo "IBU-E2E varwrite: $(cat /var/lib/ibu-e2e/boots | tr '\n' ' ')"
  if [ -f /host/ibu-e2e/bench-verity ]; then
    # bench/verity.ts: the same 32 MiB read through dm-verity and straight from its loop device,
    # alternating, page cache dropped before each (dm-bufio keeps the hash blocks it has read)
    lo=$(ls /sys/block/dm-0/slaves 2>/dev/null | head -n 1)
    lo=${lo:-$(ls /sys/block | grep '^loop' | head -n 1)}
    for i in 1 2 3 4 5; do
      for dev in /dev/mapper/ibu-root /dev/$lo; do
        [ -b "$dev" ] || continue
        sync; echo 3 > /proc/sys/vm/drop_caches
        read -r b0 _ < /proc/uptime
        dd if="$dev" of=/dev/null bs=1M count=32 2>/dev/null
        read -r b1 _ < /proc/uptime
        echo "IBU-E2E BENCH run=$i dev=$dev start=$b0 end=$b1"
      done
    done
  fi
  read -r t0 _ < /proc/uptime
  if out=$(dd if=/usr/share/ibu-e2e/payload.bin of=/dev/null bs=1M 2>&1); then
    read -r t1 _ < /proc/uptime
    echo "IBU-E2E HEALTH OK version=$version: read payload in $t0..$t1 s ($(echo "$out" | tail -n 1))"
  else
    echo "IBU-E2E HEALTH FAIL version=$version: $(echo "$out" | head -n 1)"
    echo "IBU-E2E REBOOT version=$version: not marking the boot good"
    sync
    release_state
    mount -o remount,ro /host 2>/dev/null
    reboot -f
    sleep 30
  fi
fi

# The boot is good (what the agent's confirm does, src/agent/boot-health.ts): GRUB's attempt
# counter for this image is reset, so it is never skipped for boots that did come up.
# Variant nomark models a device whose userspace never gets there.
if [ "$variant" != nomark ]; then
  . /lib/ibu/ibu-boot.sh
  ibu_env_update /host/boot/grub ibu_attempt= ibu_tally= && echo "IBU-E2E BOOT-GOOD version=$version"
fi

if [ "$variant" = commit ] && [ $trial = 1 ]; then
  # the same writer the initramfs uses: both env copies, seq+1, in place (docs/agent.md format)
  . /lib/ibu/ibu-boot.sh
  if ibu_env_update /host/boot/grub default_image="$version" try_image=; then
    echo "IBU-E2E COMMITTED default_image=$version"
  else
    echo "IBU-E2E COMMIT-FAILED: no valid grubenv in /host/boot/grub"
  fi
fi
echo "IBU-E2E POWEROFF version=$version"
sync
release_state
# a clean host journal for the next e2fsck and for GRUB, which does not replay it
mount -o remount,ro /host 2>/dev/null
poweroff -f
