import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { FleetService } from '../../src/server/contracts.js';
import { runChild, type DeltaBuilder } from '../../src/server/delta-builder.js';
import { get, publisher, start, tmpDir, waitFor, type Publisher, type Running } from './helpers.js';

const builder: DeltaBuilder = async ({ out, signal }) => {
  await runChild('sh', ['-c', 'head -c 1000 /dev/urandom > "$1"', 'sh', out], { signal });
};

describe('precompute on publish', () => {
  const work = tmpDir('precompute');
  const store = path.join(work, 'store');
  let pub: Publisher;
  let srv: Running;
  // The fleet side is another module (src/server/fleet); this stand-in reports what devices run.
  let fleetCounts: Array<{ version: string; devices: number }> = [];
  const fleet: FleetService = { versionCounts: async () => fleetCounts };

  before(async () => {
    pub = await publisher(store, work);
    await pub.publish('1.0.1');
    await pub.publish('1.0.2');
    // The inotify watch normally sees the publish first; the periodic rescan is the fallback.
    srv = await start({ dataDir: store, precompute: 2, builder, adminToken: 'tok', rescanIntervalMs: 5000 }, (s) => s.app.decorate('fleet', fleet));
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  const pairs = async (): Promise<string[]> => (await srv.ctx.deltas.jobs.all()).map((j) => `${j.from}->${j.to}`).sort();

  it('on the first scan, builds deltas into the newest release from the previous ones', async () => {
    await waitFor('first precompute', async () => ((await pairs()).includes('1.0.1->1.0.2') ? true : undefined));
    assert.deepEqual(await pairs(), ['1.0.1->1.0.2']);
  });

  it('notices a release published while it runs and precomputes from the previous K', async () => {
    await pub.publish('1.0.3');
    await waitFor('watch picks up 1.0.3', async () => ((await pairs()).some((p) => p.endsWith('->1.0.3')) ? true : undefined), 20_000);
    await waitFor('both sources', async () => ((await pairs()).filter((p) => p.endsWith('->1.0.3')).length === 2 ? true : undefined), 5_000);
    assert.deepEqual(
      (await pairs()).filter((p) => p.endsWith('->1.0.3')),
      ['1.0.1->1.0.3', '1.0.2->1.0.3'],
    );
  });

  it('prefers the versions the fleet runs most when an admin announces a publish', async () => {
    fleetCounts = [
      { version: '1.0.1', devices: 700 },
      { version: '9.9.9', devices: 5 }, // newer than the release: never a source
      { version: '1.0.3', devices: 300 },
      { version: '1.0.2', devices: 2 },
    ];
    await srv.ctx.precompute.stop(); // no watch: the admin route must do it alone
    await pub.publish('1.0.4');
    const r = await get(`${srv.url}/v1/admin/publish`, { authorization: 'Bearer tok' }, 'POST', JSON.stringify({ version: '1.0.4' }));
    assert.equal(r.status, 200);
    const body = r.json() as { newReleases: Array<{ version: string }>; queued: Array<{ from: string; to: string }> };
    assert.deepEqual(
      body.newReleases.map((x) => x.version),
      ['1.0.4'],
    );
    assert.deepEqual(
      body.queued.map((q) => q.from),
      ['1.0.1', '1.0.3'],
    );
    assert.deepEqual(
      (await pairs()).filter((p) => p.endsWith('->1.0.4')),
      ['1.0.1->1.0.4', '1.0.3->1.0.4'],
    );
    // Precompute jobs wait behind device requests.
    const job = await srv.ctx.deltas.jobs.get('1.0.1', '1.0.4');
    assert.ok(job && job.priority > 0);
    await waitFor('all built', async () => ((await srv.ctx.deltas.jobs.counts()).ready === 5 ? true : undefined), 20_000);
  });

  it('refuses to announce a version that is not in the store', async () => {
    const r = await get(`${srv.url}/v1/admin/publish`, { authorization: 'Bearer tok' }, 'POST', JSON.stringify({ version: '7.0.0' }));
    assert.equal(r.status, 404);
  });
});
