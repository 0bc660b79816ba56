// test-needs: root (scripts/radosgw.sh runs Ceph daemons; scripts/nginx-cdn.sh runs nginx)
/**
 * The scaled deployment proven together (issue #21 item 5, the small version `npm run test:scale`
 * and CI run): two `--role api` replicas and one `--role builder` on one real PostgreSQL, releases
 * in a bucket of a real S3 server (Debian's radosgw), one shared delta directory, and nginx
 * (assets/nginx/ibu-cdn.conf) balancing and caching in front of the api replicas.
 *   1. The fleet of every api replica learns the releases published to the bucket (no admin call);
 *      1,000 concurrent requests for a new pair through nginx make exactly one build, on the
 *      builder; the delta comes through nginx, is then a cache hit, and applies bit for bit.
 *   2. The fleet simulator (2,000 devices) speaks only to nginx; one api replica is killed
 *      (SIGKILL) mid-rollout and started again: the rollout completes, a bad release pauses
 *      itself, no update is lost. The 80,000-device run is `npm run bench:fleet -- --cluster`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pg from 'pg';
import { applyDelta } from '../../src/delta/index.js';
import { simulate } from '../../src/fleet/simulator/simulate.js';
import { ServerProcess } from '../../src/fleet/simulator/server-process.js';
import { generateKeys } from '../../src/release/keys.js';
import { publishRelease } from '../../src/release/publish.js';
import { S3Store } from '../../src/store/s3-store.js';
import { startCdn } from '../helpers/nginx-cdn.js';
import { dropBucket, newBucket, noS3, radosgw, type Radosgw } from '../helpers/radosgw.js';
import { SMALL_RELEASE_DAY } from './backends.js';
import { get, makeImage, releaseTree, scratchDatabase, sha256File, waitFor } from '../server/helpers.js';

const pgSkip = !process.env.IBU_TEST_PG && !process.env.CI ? 'needs IBU_TEST_PG (bash scripts/postgres.sh start)' : false;
const ADMIN = 'cluster-admin';
describe('a scaled deployment: 2 api + 1 builder on PostgreSQL, releases on S3 (radosgw), nginx in front', { skip: pgSkip }, () => {
  let work = '';
  let gw: Radosgw | string;
  const buckets: string[] = [];
  const dbs: Array<{ url: string; drop: () => Promise<void> }> = [];

  before(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-cluster-'));
    gw = await radosgw();
  });
  after(async () => {
    if (typeof gw === 'object') for (const b of buckets) await dropBucket(gw, b).catch(() => {});
    for (const d of dbs) await d.drop().catch(() => {});
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('releases from the bucket reach every replica; 1,000 requests for a new pair through nginx make one build', async (t) => {
    if (typeof gw === 'string') return noS3(t, gw);
    const bucket = await newBucket(gw, 'cluster');
    buckets.push(bucket);
    const store = `s3://${bucket}/rel`;
    const keys = await generateKeys(path.join(work, 'keys'));
    const s3 = new S3Store(store, gw.options);
    const images: Record<string, string> = {};
    try {
      for (const v of ['1.0.1', '1.0.2']) {
        images[v] = await makeImage(work, `img-${v}`, releaseTree(Number(v.split('.').pop())));
        await publishRelease({ image: images[v]!, version: v, store: s3, keyFiles: [keys.privateKeyPath], requireKernel: false });
      }
    } finally {
      await s3.close();
    }
    const db = await scratchDatabase('cluster');
    dbs.push(db);
    const deltaDir = path.join(work, 'deltas');
    await fsp.mkdir(deltaDir, { recursive: true });
    const replica = async (name: string, role: 'api' | 'builder') => {
      const dataDir = path.join(work, name);
      await fsp.mkdir(dataDir);
      return new ServerProcess({ dataDir, adminToken: ADMIN, databaseUrl: db.url, store, role, deltaDir, env: gw && typeof gw === 'object' ? gw.env : {} });
    };
    const api = [await replica('api-a', 'api'), await replica('api-b', 'api')];
    const builder = await replica('builder', 'builder');
    const sql = new pg.Client({ connectionString: db.url });
    let cdn: { origin: string; stop(): Promise<void> } | undefined;
    try {
      await api[0]!.start(); // creates the schema and binds the shared delta directory
      await Promise.all([api[1]!.start(), builder.start()]);
      cdn = await startCdn(
        path.join(work, 'cdn'),
        api.map((s) => s.origin),
      );
      await sql.connect();

      // The fleet side of each api replica reads the bucket's channel, as the download side does.
      for (const s of api) {
        const releases = await waitFor(`releases on ${s.origin}`, async () => {
          const r = await get(`${s.origin}/v1/admin/fleet/releases?channel=stable`, { authorization: `Bearer ${ADMIN}` });
          const vs = (JSON.parse(r.body.toString()) as Array<{ version: string }>).map((x) => x.version).sort();
          return vs.length === 2 ? vs : undefined;
        });
        assert.deepEqual(releases, ['1.0.1', '1.0.2']);
      }

      const url = `${cdn.origin}/v1/deltas/1.0.1/1.0.2`;
      const t0 = performance.now();
      const answers = await Promise.all(Array.from({ length: 1000 }, () => get(url)));
      const by = new Map<number, number>();
      for (const a of answers) by.set(a.status, (by.get(a.status) ?? 0) + 1);
      console.log(`# 1,000 requests through nginx in ${(performance.now() - t0).toFixed(0)} ms: ${JSON.stringify(Object.fromEntries(by))}`);
      assert.ok(
        answers.every((a) => a.status === 202 || a.status === 200),
        `statuses ${JSON.stringify(Object.fromEntries(by))}`,
      );
      const row = async () =>
        (await sql.query('SELECT state, builds FROM delta_jobs WHERE from_version = $1 AND to_version = $2', ['1.0.1', '1.0.2'])).rows[0] as
          { state: string; builds: number } | undefined;
      await waitFor('built', async () => ((await row())?.state === 'ready' ? true : undefined), 180_000, 100);
      assert.deepEqual(await row(), { state: 'ready', builds: 1 }, 'one build across the cluster');

      // 202 is never cached: once built, the pair answers 200 through nginx, and from its cache after.
      const first = await get(url);
      assert.equal(first.status, 200);
      const second = await get(url);
      assert.equal(second.headers['x-cache-status'], 'HIT');
      const delta = path.join(work, 'd.ibudelta');
      await fsp.writeFile(delta, second.body);
      await applyDelta({ sourceImage: images['1.0.1']!, delta, out: path.join(work, 'out.img') });
      assert.equal(await sha256File(path.join(work, 'out.img')), await sha256File(images['1.0.2']!));
    } finally {
      await sql.end().catch(() => {});
      await cdn?.stop().catch(() => {});
      await Promise.all([...api, builder].map((s) => s.stop().catch(() => {})));
    }
  });

  it(
    '2,000 simulated devices through nginx; one api replica killed mid-rollout: completes, bad release pauses, nothing lost',
    { timeout: 1_200_000 },
    async (t) => {
      if (typeof gw === 'string') return noS3(t, gw);
      const bucket = await newBucket(gw, 'cluster-sim');
      buckets.push(bucket);
      const db = await scratchDatabase('clustersim');
      dbs.push(db);
      const r = await simulate({
        databaseUrl: db.url,
        replicas: 2,
        cluster: { store: `s3://${bucket}/rel`, env: gw.env, builders: 1, balancer: (origins) => startCdn(path.join(work, 'cdn-sim'), origins) },
        ...SMALL_RELEASE_DAY,
      });
      console.log(`# cluster simulation: ${r.checkinsPerSec} check-ins/s, p99 ${r.p99Ms} ms, retries ${r.retries}, ${r.durationSeconds} s`);
      assert.deepEqual(r.config.cluster, { builders: 1, balancer: true, store: `s3://${bucket}/rel` });
      assert.equal(r.serverRestarted, true, 'one api replica was killed and started again');
      assert.equal(r.rolloutCompleted, true, `the first rollout completed: ${JSON.stringify(r.rollout1)}`);
      assert.equal(r.rolloutPausedCorrectly, true, `the bad release paused itself: ${r.pauseReason}`);
      assert.equal(r.lostUpdates, 0);
      const on = (v: string) => r.finalVersions.find((x) => x.version === v)?.devices ?? 0;
      assert.ok(on('2.0.0') + on('2.1.0') >= 2000 * 0.95, `the fleet moved: ${JSON.stringify(r.finalVersions)}`);
    },
  );
});
