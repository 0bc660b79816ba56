/**
 * The end-to-end story with the real agent, all real parts: two images with Node and the ibu project built
 * by `ibu image build` (2.0 with --previous 1.0), published with `ibu release publish` into a
 * store, served by `ibu serve` on 127.0.0.1, and a QEMU device booted from 1.0 that reaches the
 * server only through restricted user networking. In one QEMU run the device's upgradectl
 * prepares 2.0 through a delta the server builds on demand, applies it (try-once, reboot -f),
 * GRUB boots 2.0 once, `upgradectl confirm` runs the health check and commits. Asserted from the
 * serial log, the grubenv left on the disk, and the server's fleet records.
 * (b): 2.0's trial boot panics the kernel; the device is back on 1.0 by itself and the agent
 * there reports the rollback. (c): 2.0 boots but its health check fails; the agent rolls back.
 * (g), on (a)'s disk (issue #14): the committed 2.0 then panics at every boot: GRUB gives up on it
 * after its boot attempts, 1.0 boots, the agent reports boot-fallback and keeps 2.0 the default;
 * then both env copies are destroyed: GRUB boots what it finds, the agent rebuilds the env with
 * 2.0 and reports bootenv-repaired. The server sees every event.
 * One build, one store and one server for all; each scenario boots its own disk and device id.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { e2eUnavailable, repoRoot, makeFleetDevice, type HostFs } from './harness.js';
import { useFleetServer } from './fleet-fixture.js';
import { COMMITTED_RECORD, HEALTHY_CHECKS, UPGRADE_EVENTS, UPGRADE_STORY } from './upgrade-story.js';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');

describe('agent on a QEMU device: upgrade through a delta, try-once, health check, commit or fall back', { skip: unavailable ?? false }, () => {
  const fleet = useFleetServer('ibu-e2e-agent-');

  /**
   * A device with 1.0 installed and committed, enrolled as `name`; `runSh` is the script its
   * init runs on every boot (test/e2e/node-init.sh), with $C = upgradectl and its config.
   */
  function device(name: string, runSh: string, health: unknown[]): Promise<{ disk: string; host: HostFs }> {
    return makeFleetDevice(fleet.build, fleet.server, { name, runSh, health });
  }

  const deviceRecord = (name: string) => fleet.server.deviceRecord(name);
  /** Events without the error code column (scenarios a-c assert on type and versions). */
  const events = (name: string) => fleet.server.events(name).map(({ type, from, to }) => ({ type, from, to }));

  // prepare + apply on the first boot of 1.0 only (a marker on the host fs); confirm on every
  // later boot, as upgradectl-confirm.service does; then the state for the log
  const STANDARD_RUN = `
if [ "$IBU_E2E_VERSION" = 1.0 ] && [ ! -e /host/ibu-e2e/applied ]; then
  $C prepare; echo "IBU-E2E prepare exit $?"
  touch /host/ibu-e2e/applied; sync
  $C apply --now; echo "IBU-E2E apply exit $? (it should have rebooted)"
  sleep 600
fi
PANIC_HOOK
$C confirm; echo "IBU-E2E confirm exit $?"
$C status --json | sed 's/^/IBU-E2E status /'
`;
  const HEALTHY = HEALTHY_CHECKS;

  /** (a)'s device, committed on 2.0: scenario (g) goes on with it. */
  let committedA: { disk: string; host: HostFs } | null = null;

  test('(a) 1.0 -> 2.0 through a delta: trial boot, health check, commit; the server records success', async () => {
    const { disk, host } = await device('vm-a', STANDARD_RUN.replace('PANIC_HOOK', ''), HEALTHY);
    await fleet.runDevice('vm-a', disk, [...UPGRADE_STORY]);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['2.0', null], 'committed on the disk');
    assert.ok(await host.readFile('/images/2.0.img'), '2.0 installed');
    assert.deepEqual(await deviceRecord('vm-a'), COMMITTED_RECORD);
    assert.deepEqual(events('vm-a'), UPGRADE_EVENTS);
    // the request log (pino JSON lines): the delta was requested and answered 200
    const deltaServed = (await fleet.server.statusesFor('/v1/deltas/1.0/2.0')).includes(200);
    assert.ok(deltaServed, 'the server answered GET /v1/deltas/1.0/2.0 with 200');
    committedA = { disk, host };
  });

  test('(b) 2.0 panics the kernel on its trial boot: back on 1.0 by itself; the server records a rollback', async () => {
    // the crash comes before any health check could run, as with a broken kernel or init
    const panic = 'if [ "$IBU_E2E_TRIAL" = 1 ]; then echo "IBU-E2E crashing the trial boot"; echo c > /proc/sysrq-trigger; sleep 60; fi';
    const { disk, host } = await device('vm-b', STANDARD_RUN.replace('PANIC_HOOK', panic), HEALTHY);
    const log = await fleet.runDevice('vm-b', disk, [
      /IBU-E2E prepare exit 0/,
      /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
      /IBU-E2E crashing the trial boot/,
      /Kernel panic - not syncing/,
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /IBU-E2E confirm exit 10/, // 10: rolled back (docs/agent.md)
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
      /IBU-E2E POWEROFF version=1\.0/,
    ]);
    assert.doesNotMatch(log, /IBU-E2E RUNNING version=2\.0 trial=0/);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['1.0', null]);
    const rec = await deviceRecord('vm-b');
    assert.equal(rec.version, '1.0');
    assert.equal(rec.committedVersion, '1.0');
    assert.deepEqual(
      events('vm-b').map((e) => (e as { type: string }).type),
      ['apply-started', 'rolled-back'],
    );
  });

  test('(c) 2.0 boots but fails its health check: the agent rolls back to 1.0', async () => {
    // healthy only on 1.0: the check reads the image's own version file
    const health = [{ name: 'marker', command: ['sh', '-c', 'test "$(cat /etc/ibu-e2e/version)" = 1.0'], timeoutSeconds: 5 }];
    const { disk, host } = await device('vm-c', STANDARD_RUN.replace('PANIC_HOOK', ''), health);
    await fleet.runDevice('vm-c', disk, [
      /IBU-E2E prepare exit 0/,
      /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
      /IBU-E2E RUNNING version=2\.0 trial=1/,
      /upgradectl: rebooting/,
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
      /IBU-E2E POWEROFF version=1\.0/,
    ]);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['1.0', null]);
    const rec = await deviceRecord('vm-c');
    assert.equal(rec.version, '1.0');
    assert.deepEqual(events('vm-c'), [
      { type: 'apply-started', from: '1.0', to: '2.0' },
      { type: 'upgrade-failed', from: '2.0', to: '1.0' },
    ]);
  });

  test('(g) the committed 2.0 panics at every boot, then both env copies are lost: always back on a good image, the server told', async () => {
    assert.ok(committedA, '(g) goes on with the disk (a) committed on 2.0; (a) did not get there');
    const { disk, host } = committedA;
    const RUN = 'C="node /opt/ibu/bin/upgradectl --config /host/ibu-e2e/agent.json"\n';
    const confirmRun = `$C confirm; echo "IBU-E2E confirm exit $?"\n$C status --json | sed 's/^/IBU-E2E status /'\n`;
    const script = path.join(fleet.work, 'run-g.sh');
    // g1: 2.0 (committed) dies before userspace on every boot, as with a broken initrd.
    const crash = 'if [ "$IBU_E2E_VERSION" = 2.0 ]; then echo "IBU-E2E committed image crashing"; echo c > /proc/sysrq-trigger; sleep 60; fi\n';
    await fsp.writeFile(script, RUN + crash + confirmRun);
    await host.putFile('/ibu-e2e/run.sh', script);
    await fleet.runDevice('vm-a-g1', disk, [
      /ibu: booting image 2\.0 \(trial=0\), boot x of xx/,
      /Kernel panic - not syncing/,
      /ibu: booting image 2\.0 \(trial=0\), boot xx of xx/,
      /Kernel panic - not syncing/,
      /ibu: 2\.0 did not come up in 2 boots; skipping it/,
      /ibu: booting image 1\.0 \(trial=0\)/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /boot-fallback: Booted 1\.0 instead of the committed 2\.0: GRUB gave up on 2\.0/,
      /IBU-E2E confirm exit 0/,
      /IBU-E2E POWEROFF version=1\.0/,
    ]);
    let st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.bad, st.attempt], ['2.0', ['2.0'], null], 'the fallback is not committed; the boot of 1.0 was marked good');
    assert.deepEqual(
      fleet.server
        .events('vm-a')
        .slice(2)
        .map((e) => [e.type, e.from, e.to, e.errorCode]),
      [['boot-fallback', '2.0', '1.0', 'BOOT_FALLBACK']],
    );
    // g2: 2.0 healthy again, both env copies overwritten: GRUB boots what it finds on the disk.
    await fsp.writeFile(script, RUN + confirmRun);
    await host.putFile('/ibu-e2e/run.sh', script);
    for (const f of ['/boot/grub/grubenv', '/boot/grub/grubenv.bak']) await host.writeInPlace(f, Buffer.alloc(1024, 0x5a));
    await fleet.runDevice('vm-a-g2', disk, [
      /ibu: no valid boot environment/,
      /IBU-E2E RUNNING version=(1|2)\.0 trial=0/,
      /bootenv-repaired: Both copies of the boot environment were unusable .* rebuilt with default_image=2\.0 \(the committed image the agent last saw\)/,
      /IBU-E2E POWEROFF/,
    ]);
    st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.warnings], ['2.0', []], 'both copies rebuilt, naming the committed 2.0');
    const later = fleet.server
      .events('vm-a')
      .slice(3)
      .map((e) => e.type);
    assert.equal(later[0], 'bootenv-repaired', JSON.stringify(later));
  });
});
