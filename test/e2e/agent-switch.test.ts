/**
 * Issue #18 on the model device (busybox userland with Node and the agent; not yet the Debian
 * appliance), all real parts as in agent-upgrade.test.ts: images built and published, `ibu serve`
 * on 127.0.0.1, QEMU under OVMF.
 * (k1) `upgradectl apply --method kexec`: the agent reads 2.0's kernel and initrd out of the
 *      verified image file, `kexec -l`s them with the trial's command line and `kexec -e`s: 2.0
 *      runs as a trial without the firmware or GRUB (no GRUB line between the switch and 2.0), the
 *      health check passes, the agent commits; grubenv never had try_image.
 * (k2) the same, but the kexec'd trial kernel panics: `panic=5` resets the machine, the firmware
 *      and GRUB boot the committed 1.0 (kexec does not set try_image, so nothing else can boot),
 *      and the agent there records and reports the rollback.
 * (k3) a stuck reboot: a reader in D state on a suspended device-mapper device and dirty pages
 *      for it; the model's orderly reboot (`sync`, then reset) blocks, `reboot -f` (which syncs
 *      too) blocks, sysrq `b` resets; the trial boots by GRUB's try-once, and the agent reports
 *      the escalation (event reboot-stuck) and commits.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { e2eUnavailable, repoRoot, makeFleetDevice } from './harness.js';
import { useFleetServer } from './fleet-fixture.js';
import { HEALTHY_CHECKS } from './upgrade-story.js';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');

describe('switching images by kexec, and a stuck reboot escalated, on a QEMU device', { skip: unavailable ?? false }, () => {
  const fleet = useFleetServer('ibu-e2e-switch-');

  const events = (name: string) => fleet.server.eventsWithMethod(name);

  const run = (apply: string, hook = '', before = '') => `
if [ "$IBU_E2E_VERSION" = 1.0 ] && [ ! -e /host/ibu-e2e/applied ]; then
  $C prepare; echo "IBU-E2E prepare exit $?"
  touch /host/ibu-e2e/applied; sync
  ${before}
  echo "IBU-E2E switching up=$(cut -d' ' -f1 /proc/uptime)s"
  ${apply}; echo "IBU-E2E apply exit $? (it should have switched)"
  sleep 600
fi
${hook}
$C confirm; echo "IBU-E2E confirm exit $?"
$C status --json | sed 's/^/IBU-E2E status /'
`;
  const KEXEC = { reboot: { command: ['reboot', '-f'], kexecCommand: ['kexec', '-e'], forceAfterSeconds: 0, sysrqAfterSeconds: 0 } };

  /** The serial log between the switch and the first line of the next userland. */
  function between(log: string, from: RegExp, to: RegExp): string {
    const a = log.search(from);
    const rest = log.slice(a);
    return rest.slice(0, rest.search(to));
  }

  test('(k1) kexec into 2.0: a trial without firmware or GRUB, health check, commit', async () => {
    const { disk, host } = await makeFleetDevice(fleet.build, fleet.server, {
      name: 'vm-k1',
      runSh: run('$C apply --now --method kexec'),
      health: HEALTHY_CHECKS,
      agentConfig: KEXEC,
    });
    const log = await fleet.runDevice('vm-k1', disk, [
      /IBU-E2E prepare exit 0/,
      /switch into 2\.0 by kexec \(asked: kexec\): kexec is available/,
      /kexec loaded 2\.0: root=UUID=\S+ loop=\/images\/2\.0\.img boot=ibu ro panic=5 .*ibu\.version=2\.0 ibu\.trial=1/,
      /rebooting \(kexec\): kexec -e/,
      /IBU-E2E RUNNING version=2\.0 trial=1/,
      /IBU-E2E confirm exit 0/,
      /IBU-E2E status .*"running":"2\.0","committed":"2\.0"/,
      /IBU-E2E POWEROFF version=2\.0/,
    ]);
    const sw = between(log, /IBU-E2E switching/, /IBU-E2E RUNNING version=2\.0/);
    assert.doesNotMatch(sw, /ibu: default_image=|BdsDxe|UEFI/, 'no firmware and no GRUB between the switch and 2.0');
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['2.0', null]);
    assert.deepEqual(
      events('vm-k1').map((e) => [e.type, e.from, e.to, e.method]),
      [
        ['apply-started', '1.0', '2.0', null],
        ['upgrade-succeeded', '1.0', '2.0', 'kexec'],
      ],
    );
  });

  test('(k2) the kexec trial panics: the firmware reboot boots the committed 1.0; the rollback is reported', async () => {
    const panic = 'if [ "$IBU_E2E_TRIAL" = 1 ]; then echo "IBU-E2E crashing the kexec trial"; echo c > /proc/sysrq-trigger; sleep 60; fi';
    const { disk, host } = await makeFleetDevice(fleet.build, fleet.server, {
      name: 'vm-k2',
      runSh: run('$C apply --now --method kexec', panic),
      health: HEALTHY_CHECKS,
      agentConfig: KEXEC,
    });
    const log = await fleet.runDevice('vm-k2', disk, [
      /IBU-E2E prepare exit 0/,
      /rebooting \(kexec\): kexec -e/,
      /IBU-E2E RUNNING version=2\.0 trial=1/,
      /IBU-E2E crashing the kexec trial/,
      /Kernel panic - not syncing/,
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /IBU-E2E confirm exit 10/,
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
      /IBU-E2E POWEROFF version=1\.0/,
    ]);
    assert.doesNotMatch(log, /try=2\.0/, 'GRUB never saw a try flag');
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['1.0', null]);
    assert.deepEqual(
      events('vm-k2').map((e) => [e.type, e.from, e.to, e.method]),
      [
        ['apply-started', '1.0', '2.0', null],
        ['rolled-back', '2.0', '1.0', 'kexec'],
      ],
    );
  });

  test('(k3) a process in D state blocks the reboot: reboot -f, then sysrq b; reported after the trial boot', async () => {
    // 8 MiB on a loop device behind dm-linear; dirty pages for it in the page cache, then the device
    // suspended: every sync waits for it, and so does a reader of a block not in the cache (D state).
    const stuck = `
insmod /lib/modules/$(uname -r)/dm-mod.ko
dd if=/dev/zero of=/tmp/stuck.img bs=1M count=8 2>/dev/null
losetup /dev/loop7 /tmp/stuck.img
dmsetup create --noudevsync stuck --table "0 16384 linear /dev/loop7 0"; dmsetup mknodes stuck
ls -l /dev/mapper/
# held open by a sleeper: the last close of a block device writes its dirty pages back
sleep 100000 </dev/mapper/stuck &
dd if=/dev/urandom of=/dev/mapper/stuck bs=4k count=64 conv=notrunc
dmsetup suspend --noflush stuck
dmsetup info stuck | grep State
dd if=/dev/mapper/stuck of=/dev/null bs=4k count=1 skip=1000 &
sleep 2
grep -E '^(Dirty|Writeback):' /proc/meminfo
echo "IBU-E2E reader $! $(grep State /proc/$!/status)"`;
    const { disk, host } = await makeFleetDevice(fleet.build, fleet.server, {
      name: 'vm-k3',
      runSh: run('$C apply --now', '', stuck),
      health: HEALTHY_CHECKS,
      agentConfig: { reboot: { command: ['sh', '-c', 'sync && reboot -f'], forceCommand: ['reboot', '-f'], forceAfterSeconds: 10, sysrqAfterSeconds: 10 } },
    });
    await fleet.runDevice('vm-k3', disk, [
      /IBU-E2E prepare exit 0/,
      /State:\s+SUSPENDED/,
      /IBU-E2E reader \d+ State:\s+D \(disk sleep\)/,
      /rebooting \(reboot\): sh -c sync && reboot -f/,
      /still running 10 s after 'sh -c sync && reboot -f'; escalating: reboot -f/,
      /still running 10 s after 'reboot -f'; escalating: sysrq b/,
      /sysrq: Resetting/,
      /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
      /IBU-E2E RUNNING version=2\.0 trial=1/,
      /reboot-stuck: The switch by reboot did not happen by itself; it escalated through 'sh -c sync && reboot -f' .*, 'reboot -f' .*, 'sysrq b'/,
      /IBU-E2E confirm exit 0/,
      /IBU-E2E POWEROFF version=2\.0/,
    ]);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['2.0', null]);
    assert.deepEqual(
      events('vm-k3').map((e) => [e.type, e.from, e.to, e.errorCode, e.method]),
      [
        ['apply-started', '1.0', '2.0', null, null],
        ['reboot-stuck', '1.0', '2.0', 'REBOOT_STUCK', null],
        ['upgrade-succeeded', '1.0', '2.0', null, 'reboot'],
      ],
    );
  });
});
