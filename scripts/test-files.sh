#!/usr/bin/env bash
# The compiled test files of one suite, one per line, for `node --test` (see package.json and
# test/README.md). Run after tsc; lists only what dist/ holds, so clean dist/ first.
#   all       everything (npm test, CI): needs root, QEMU, PostgreSQL (IBU_TEST_PG), Chromium
#   unit      no QEMU: the library against real tools and loopback HTTP (npm run test:unit); run as
#             a user, it leaves out the files that start with a `// test-needs: root (why)` line
#   e2e       the QEMU boots of test/e2e (npm run test:e2e)
#   e2e-full  every QEMU boot of test/e2e (npm run test:e2e:full); FULL_ONLY below are left out of `all`
#             (CI) and `e2e`: too long for CI's 45-minute budget
#   zfs       the ZFS guest tests (npm run test:zfs)
#   scale     replicas on one PostgreSQL (npm run test:scale; also part of all): the lease hammer
#             with two server processes, the delta builder pool (one api and two builder processes: one
#             build per pair, a killed builder), and the scaled deployment together (2 api + 1 builder,
#             releases on radosgw, nginx in front: one build for 1,000 requests, a release day of
#             2,000 devices with one api replica killed midway)
set -euo pipefail
cd "$(dirname "$0")/.."
# Test files that boot a QEMU guest outside test/e2e (test/zfs/zfs-units.test.ts does not).
QEMU_ZFS=(dist/test/zfs/guest.test.js dist/test/zfs/zfs-transport.test.js)
# Too long for CI's 45 minutes, only in e2e-full: the model device's upgrade story (the appliance's
# story in appliance-upgrade runs the agent's scenarios on the real Debian device, in CI), bookworm
# machines adopting images (systemd guests, downloads), the kexec / stuck-reboot scenarios, and
# the appliance's soft-reboot story, and the verified read-only appliance (its own four releases
# and one long QEMU run: issue #22 item 4).
FULL_ONLY=(dist/test/e2e/adopt.test.js dist/test/e2e/agent-upgrade.test.js dist/test/e2e/agent-switch.test.js dist/test/e2e/appliance-switch.test.js
  dist/test/e2e/appliance-verity.test.js)
# Started first: the appliance's story is the longest file of CI (15-25 of its 23-32 min), so it runs beside
# everything else from the start instead of becoming the tail (node --test keeps the given order).
FIRST=(dist/test/e2e/appliance-upgrade.test.js)
every() { find dist/test -name '*.test.js' | sort; }
all() {
  local f
  for f in "${FIRST[@]}"; do [ -e "$f" ] && echo "$f"; done
  every | grep -vxF -f <(printf '%s\n' "${FULL_ONLY[@]}" "${FIRST[@]}")
}
case "${1:-all}" in
  all) all ;;
  unit)
    files=$(all | grep -v '^dist/test/e2e/' | grep -vxF -f <(printf '%s\n' "${QEMU_ZFS[@]}"))
    if [ "$(id -u)" = 0 ]; then echo "$files"; else echo "$files" | grep -vxF -f <(grep -l '^// test-needs: root' $files || true); fi
    ;;
  e2e) all | grep '^dist/test/e2e/' ;;
  e2e-full) find dist/test/e2e -name '*.test.js' | sort ;;
  zfs) find dist/test/zfs -name '*.test.js' | sort ;;
  scale) printf '%s\n' dist/test/fleet/replicas.test.js dist/test/fleet/cluster.test.js dist/test/server/delta-replicas.test.js ;;
  *) echo "usage: $0 all|unit|e2e|e2e-full|zfs|scale" >&2; exit 2 ;;
esac
