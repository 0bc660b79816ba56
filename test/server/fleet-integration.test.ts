import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { runChild, type DeltaBuilder } from '../../src/server/delta-builder.js';
import { get, publisher, start, tmpDir, waitFor, type Publisher, type Running } from './helpers.js';
import { BACKENDS } from '../fleet/backends.js';
import { signed } from '../helpers/enroll.js';

const builder: DeltaBuilder = async ({ out, signal }) => {
  await runChild('sh', ['-c', 'head -c 1000 /dev/urandom > "$1"', 'sh', out], { signal });
};

// The same suite on each fleet backend (SQLite in the data directory, PostgreSQL by URL).
for (const backend of BACKENDS) {
  describe(`with the fleet plugin on ${backend.name}: precompute follows what devices run`, { skip: backend.skip }, () => {
    const work = tmpDir('fleet');
    const store = path.join(work, 'store');
    let pub: Publisher;
    let srv: Running;
    let cleanup: (() => Promise<void>) | undefined;

    before(async () => {
      pub = await publisher(store, work);
      for (const v of ['1.0.1', '1.0.2', '1.0.3']) await pub.publish(v);
      process.env.IBU_ENROLLMENT_SECRET = 'enroll-me';
      // PostgreSQL: a fresh database by URL (the server opens its own repository on it).
      const made = await backend.make();
      cleanup = made.cleanup;
      if (made.url) await made.repo.close();
      srv = await start({ dataDir: store, precompute: 1, builder, adminToken: 'tok', fleet: true, databaseUrl: made.url });
    });
    after(async () => {
      await srv?.close();
      await cleanup?.();
      await fsp.rm(work, { recursive: true, force: true });
    });

    it('registers the fleet plugin beside the release routes', async () => {
      assert.ok(srv.app.fleet, 'app.fleet is decorated');
      assert.equal((await get(`${srv.url}/metrics`)).status, 200);
      assert.equal((await get(`${srv.url}/v1/channels/stable/releases`)).status, 200);
    });

    it('releases the data directory when start-up fails (bad fleet database URL)', async () => {
      const dir = tmpDir('fleet-bad');
      try {
        await assert.rejects(start({ dataDir: dir, fleet: true, databaseUrl: 'mysql://db/fleet' }), { code: 'CONFIG_INVALID' });
        const again = await start({ dataDir: dir, precompute: 0 });
        await again.close();
      } finally {
        await fsp.rm(dir, { recursive: true, force: true });
      }
    });

    it('queues the delta from the version most devices report, not the previous release', async () => {
      const devices: Array<[string, string]> = [
        ['dev-a', '1.0.1'],
        ['dev-b', '1.0.1'],
        ['dev-c', '1.0.2'],
      ];
      for (const [id, version] of devices) {
        const e = await get(
          `${srv.url}/v1/devices/enroll`,
          {},
          'POST',
          JSON.stringify(signed({ deviceId: id, enrollmentSecret: 'enroll-me', channel: 'stable' })),
        );
        assert.equal(e.status, 200, e.body.toString());
        const token = String(e.json().token);
        const c = await get(
          `${srv.url}/v1/devices/${id}/checkin`,
          { authorization: `Bearer ${token}` },
          'POST',
          JSON.stringify({ version, state: 'idle', trial: false }),
        );
        assert.equal(c.status, 200, c.body.toString());
      }
      await waitFor('fleet counts', async () => ((await srv.app.fleet!.versionCounts('stable')).length >= 2 ? true : undefined), 10_000);
      await srv.ctx.precompute.stop();
      await pub.publish('1.0.4');
      const r = await get(`${srv.url}/v1/admin/publish`, { authorization: 'Bearer tok' }, 'POST', JSON.stringify({ version: '1.0.4' }));
      assert.equal(r.status, 200);
      assert.deepEqual(
        (r.json().queued as Array<{ from: string }>).map((q) => q.from),
        ['1.0.1'],
      );
      await waitFor('built', async () => ((await srv.ctx.deltas.jobs.get('1.0.1', '1.0.4'))?.state === 'ready' ? true : undefined), 20_000);
      // The fleet side asks app.deltas whether a device's delta is ready.
      assert.equal(await srv.app.deltas!.status('1.0.1', '1.0.4'), 'ready');
      assert.equal(await srv.app.deltas!.status('1.0.2', '1.0.4'), 'none');
    });
  });
}
