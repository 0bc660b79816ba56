/**
 * The fleet side of issue #14: a device's boot-fallback and bootenv-repaired events flag it for
 * the dashboard's problems (they are about the boot, not a step of an upgrade: no rollout
 * participation changes), the fallback flag clears when the device is back on its committed
 * image, the repair flag at its next successful upgrade. An etc-conflict event (issue #22) is only
 * recorded. On SQLite and a real PostgreSQL.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { signed } from '../helpers/enroll.js';
import { Fleet, hashToken } from '../../src/fleet/fleet.js';
import type { FleetRepository } from '../../src/fleet/repository.js';
import { isIbuError } from '../../src/errors.js';
import { BACKENDS } from './backends.js';

for (const backend of BACKENDS) {
  describe(`boot events on ${backend.name}`, { skip: backend.skip }, () => {
    let repo: FleetRepository;
    let cleanup: () => Promise<void>;
    let svc: Fleet;
    let token = '';
    before(async () => {
      ({ repo, cleanup } = await backend.make());
      svc = new Fleet(repo, { enrollmentSecretHash: hashToken('s3cret') });
      await svc.start();
      token = (await svc.enroll(signed({ deviceId: 'box', enrollmentSecret: 's3cret' }))).token;
    });
    after(async () => {
      await svc?.close().catch(() => {});
      await cleanup?.();
    });

    test('boot-fallback and bootenv-repaired flag the device until each is over', async () => {
      await svc.checkin('box', token, { version: '2', state: 'committed', trial: false, committedVersion: '2' });
      assert.deepEqual(await svc.problems(10), []);
      const message = 'Booted 1 instead of the committed 2: GRUB gave up on 2.';
      await svc.event('box', token, { type: 'boot-fallback', fromVersion: '2', toVersion: '1', error: { code: 'BOOT_FALLBACK', message } });
      await svc.event('box', token, {
        type: 'bootenv-repaired',
        fromVersion: '2',
        toVersion: '1',
        error: { code: 'BOOTENV_REPAIRED', message: 'grubenv is corrupt. Rewritten from grubenv.bak.' },
      });
      let d = await svc.device('box');
      assert.deepEqual([...d.flags].sort(), ['boot-fallback', 'bootenv-repaired']);
      assert.equal(d.lastErrorCode, 'BOOTENV_REPAIRED');
      assert.deepEqual(
        (await svc.problems(10)).map((p) => p.id),
        ['box'],
      );
      // Still on the fallback: the flag stays.
      await svc.checkin('box', token, { version: '1', state: 'committed', trial: false, committedVersion: '2' });
      assert.ok((await svc.device('box')).flags.includes('boot-fallback'));
      // Back on 2: the fallback is over; the repair stays listed until an upgrade succeeds.
      await svc.checkin('box', token, { version: '2', state: 'committed', trial: false, committedVersion: '2' });
      d = await svc.device('box');
      assert.deepEqual(d.flags, ['bootenv-repaired']);
      await svc.event('box', token, { type: 'upgrade-succeeded', fromVersion: '2', toVersion: '3' });
      assert.deepEqual((await svc.device('box')).flags, []);
      await assert.rejects(svc.event('box', token, { type: 'boot-exploded' as 'boot-fallback', fromVersion: '2', toVersion: '1' }), (e) =>
        isIbuError(e, 'BAD_REQUEST'),
      );
    });

    test('etc-conflict (issue #22) is recorded and changes neither flags, last error, nor rollout state', async () => {
      const before = await svc.device('box');
      await svc.event('box', token, {
        type: 'etc-conflict',
        fromVersion: '2',
        toVersion: '3',
        error: { code: 'ETC_CONFLICT', message: "1 path(s) of /etc changed on the device and in 3: /etc/app.conf (device): kept the device's." },
      });
      const d = await svc.device('box');
      assert.deepEqual(d.flags, before.flags);
      assert.equal(d.lastErrorCode, before.lastErrorCode);
      assert.equal(d.rolloutId, before.rolloutId);
    });
  });
}
