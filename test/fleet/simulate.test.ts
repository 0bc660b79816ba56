import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simulate } from '../../src/fleet/simulator/simulate.js';
import { BACKENDS, SMALL_RELEASE_DAY } from './backends.js';

// A small release day: 2,000 simulated devices speak the real protocol over loopback to the real
// server in a child process, through a staged rollout with injected failures, rollbacks and
// silent devices, a server restart midway, and a bad release that must pause itself. Counts
// only: timings depend on the machine and are measured in bench/fleet.ts instead.
// Two replicas behind nginx, one killed mid-rollout, run in test/fleet/cluster.test.ts (the scaled
// deployment); `replicas` here stays for a quick look without nginx and S3.
const CASES = BACKENDS.map((backend) => ({ backend, replicas: 1 }));
for (const { backend, replicas } of CASES) {
  test(
    `fleet simulation on ${backend.name}${replicas > 1 ? ` with ${replicas} replicas, one killed midway` : ''}: rollout completes across a restart, a bad release pauses itself, nothing lost`,
    { timeout: 1_200_000, skip: backend.skip },
    async () => {
      // PostgreSQL: a fresh database by URL (the simulated server opens it); SQLite: in the server's data dir.
      const made = await backend.make();
      if (made.url) await made.repo.close();
      try {
        const r = await simulate({
          databaseUrl: made.url,
          replicas,
          ...SMALL_RELEASE_DAY,
          // the waves open gradually (rampPercentPerMinute): 200 devices/s, so the 100 % wave takes ~5 s
          rampDevicesPerSecond: 200,
        });
        assert.equal(r.devices, 2000);
        assert.equal(r.config.maxConcurrentReboots, 200, 'a tenth of the fleet may reboot at once');
        assert.equal(r.serverRestarted, true);
        assert.equal(r.config.replicas, replicas);
        assert.equal(r.config.rampDevicesPerSecond, 200);
        assert.equal(r.rolloutCompleted, true, `the first rollout completed: ${JSON.stringify(r.rollout1)}`);
        assert.equal(r.rolloutPausedCorrectly, true, `the bad release paused itself in its first wave: ${r.pauseReason}`);
        assert.match(r.pauseReason ?? '', /failure ratio/);
        assert.equal(r.lostUpdates, 0);
        assert.ok(r.injected.failed + r.injected.rolledBack + r.injected.silent > 0, 'failures were injected');
        assert.ok(r.injected.badRolledBack > 0);
        const on = (v: string) => r.finalVersions.find((x) => x.version === v)?.devices ?? 0;
        assert.ok(on('2.0.0') + on('2.1.0') >= 2000 * 0.95, `the fleet moved: ${JSON.stringify(r.finalVersions)}`);
        assert.ok(on('2.1.0') < 2000 * 0.2, 'the bad release stayed in its first wave');
        assert.ok(r.checkins > 2000 * 3);
      } finally {
        await made.cleanup();
      }
    },
  );
}
