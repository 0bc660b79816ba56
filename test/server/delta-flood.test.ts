import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { get, publisher, start, tmpDir, type Running } from './helpers.js';
import { signed } from '../helpers/enroll.js';

/**
 * Issue #15 item 5 against the real server: an anonymous client floods delta requests, each on a
 * fresh connection (reconnecting as fast as it is dropped), from one address and then from many.
 * Only HTTP and the queue's own counts are used, so the same file runs against a server without
 * admission (it fails there: every flood request is queued and the device's pair lands behind them).
 */

const VERSIONS = ['1.0.1', '1.0.2', '1.0.3', '1.0.4', '1.0.5', '1.0.6', '1.0.7', '1.0.8'];
const NEWEST = VERSIONS.at(-1)!;

interface Answer {
  status: number;
  retryAfter: string | undefined;
  body: Record<string, unknown>;
}

/** One GET on its own connection from a chosen loopback address (Linux routes all of 127/8 to lo). */
function getFrom(base: string, route: string, localAddress: string): Promise<Answer> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.get({ host: u.hostname, port: Number(u.port), path: route, localAddress, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        const ra = res.headers['retry-after'];
        resolve({ status: res.statusCode ?? 0, retryAfter: Array.isArray(ra) ? ra[0] : ra, body: JSON.parse(text) as Record<string, unknown> });
      });
    });
    req.on('error', reject);
  });
}

/** Every ordered pair of published versions except `skip`: 55 of them (the issue saw 54 in 141 ms). */
function floodPairs(skip: Array<[string, string]>): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const a of VERSIONS) for (const b of VERSIONS) if (a !== b && !skip.some(([f, t]) => f === a && t === b)) out.push([a, b]);
  return out;
}

const code = (a: Answer): unknown => (a.body.error as { code?: unknown } | undefined)?.code;

describe('delta admission: a flood does not push the pairs devices need back (issue #15 item 5)', () => {
  const work = tmpDir('flood');
  const store = path.join(work, 'store');
  let srv: Running | undefined;
  const limits = { maxQueued: 16, perClient: 4 };

  before(async () => {
    process.env.IBU_ENROLLMENT_SECRET = 'enroll-me';
    const pub = await publisher(store, work);
    for (const v of VERSIONS) await pub.publish(v);
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  /** workers 0: the queue only fills, so positions and counts are exact. */
  async function fresh(fleet: boolean): Promise<Running> {
    await srv?.close();
    for (const f of ['server.sqlite', 'server.sqlite-wal', 'server.sqlite-shm', 'fleet.sqlite', 'fleet.sqlite-wal', 'fleet.sqlite-shm'])
      await fsp.rm(path.join(store, f), { force: true });
    // A variable, not a literal: this file also compiles against a server without `admission` (see the top).
    const options = { dataDir: store, precompute: 0, workers: 0, fleet, admission: limits, adminToken: 'tok' };
    srv = await start(options);
    return srv;
  }
  const queued = async (s: Running): Promise<number> => (await s.ctx.deltas.jobs.counts()).queued;

  it('with a fleet: the flood is capped per address, the queue bounded, the enrolled device first', async () => {
    const s = await fresh(true);
    const t0 = Date.now();
    const flood = await Promise.all(floodPairs([['1.0.1', NEWEST]]).map(([f, t]) => getFrom(s.url, `/v1/deltas/${f}/${t}`, '127.0.0.1')));
    const ms = Date.now() - t0;
    const admitted = flood.filter((a) => a.status === 202);
    const capped = flood.filter((a) => a.status === 429);
    assert.equal(admitted.length, limits.perClient, `202s from one address in ${ms} ms: ${admitted.length} of ${flood.length}`);
    assert.equal(capped.length, flood.length - limits.perClient);
    for (const a of capped) {
      assert.equal(code(a), 'DELTA_CLIENT_LIMIT');
      assert.ok(Number(a.retryAfter) > 0, 'a refusal says when to come back');
    }
    assert.equal(await queued(s), limits.perClient);

    // Many addresses: each gets its own cap, the queue never passes its bound.
    const rest: Array<[string, string]> = [];
    for (const [f, t] of floodPairs([['1.0.1', NEWEST]])) if (!(await s.ctx.deltas.jobs.get(f, t))) rest.push([f, t]);
    let full = 0;
    for (let i = 0; i < rest.length; i++) {
      const [f, t] = rest[i]!;
      const a = await getFrom(s.url, `/v1/deltas/${f}/${t}`, `127.0.0.${2 + Math.floor(i / limits.perClient)}`);
      assert.ok(a.status === 202 || a.status === 503, `${f}->${t}: ${a.status}`);
      if (a.status === 503) {
        assert.equal(code(a), 'DELTA_QUEUE_FULL');
        assert.ok(Number(a.retryAfter) > 0);
        full++;
      }
      assert.ok((await queued(s)) <= limits.maxQueued, `queue at ${await queued(s)} after ${i + 1} more requests`);
    }
    assert.equal(await queued(s), limits.maxQueued);
    assert.equal(full, rest.length - (limits.maxQueued - limits.perClient));

    // A real device: enrolled, its check-in names 1.0.1 -> newest as its next hop.
    const e = await get(
      `${s.url}/v1/devices/enroll`,
      {},
      'POST',
      JSON.stringify(signed({ deviceId: 'dev-a', enrollmentSecret: 'enroll-me', channel: 'stable' })),
    );
    assert.equal(e.status, 200, e.body.toString());
    const auth = { authorization: `Bearer ${String(e.json().token)}` };
    const c = await get(`${s.url}/v1/devices/dev-a/checkin`, auth, 'POST', JSON.stringify({ version: '1.0.1', state: 'idle', trial: false }));
    assert.equal(c.status, 200, c.body.toString());
    assert.equal((c.json().target as { version?: string } | null)?.version, NEWEST);
    // From the flooding address itself, with the queue full: queued, next to build.
    const d = await getFrom(s.url, `/v1/deltas/1.0.1/${NEWEST}`, '127.0.0.1');
    assert.equal(d.status, 202, JSON.stringify(d.body));
    assert.equal(d.body.position, 1);
    assert.ok((await queued(s)) <= limits.maxQueued, 'a needed pair displaces a flood job, the bound holds');

    // A second device's hop, which the flood may have queued first: it moves up too, both lead the queue.
    const e2 = await get(
      `${s.url}/v1/devices/enroll`,
      {},
      'POST',
      JSON.stringify(signed({ deviceId: 'dev-b', enrollmentSecret: 'enroll-me', channel: 'stable' })),
    );
    const auth2 = { authorization: `Bearer ${String(e2.json().token)}` };
    const c2 = await get(`${s.url}/v1/devices/dev-b/checkin`, auth2, 'POST', JSON.stringify({ version: '1.0.2', state: 'idle', trial: false }));
    assert.equal(c2.status, 200, c2.body.toString());
    const d2 = await getFrom(s.url, `/v1/deltas/1.0.2/${NEWEST}`, '127.0.0.99');
    assert.equal(d2.status, 202, JSON.stringify(d2.body));
    const again = await getFrom(s.url, `/v1/deltas/1.0.1/${NEWEST}`, '127.0.0.1');
    assert.deepEqual([d2.body.position, again.body.position].sort(), [1, 2]);
    assert.ok((await queued(s)) <= limits.maxQueued);
  });

  it("without a fleet: pairs into a channel's newest release go first, others are capped per address", async () => {
    const s = await fresh(false);
    const offPath = floodPairs([]).filter(([, t]) => t !== NEWEST);
    const flood = await Promise.all(offPath.map(([f, t]) => getFrom(s.url, `/v1/deltas/${f}/${t}`, '127.0.0.1')));
    assert.equal(flood.filter((a) => a.status === 202).length, limits.perClient);
    assert.ok(flood.filter((a) => a.status !== 202).every((a) => a.status === 429 && code(a) === 'DELTA_CLIENT_LIMIT'));
    assert.equal(await queued(s), limits.perClient);
    // The operator sees who queued them.
    const cache = (await get(`${s.url}/v1/admin/cache`, { authorization: 'Bearer tok' })).json();
    const held = (cache.deltas as Array<{ client: string | null }>).filter((j) => j.client === '127.0.0.1');
    assert.equal(held.length, limits.perClient);
    // The upgrade a device without a fleet makes: from what it runs to the channel's newest.
    const d = await getFrom(s.url, `/v1/deltas/1.0.3/${NEWEST}`, '127.0.0.1');
    assert.equal(d.status, 202, JSON.stringify(d.body));
    assert.equal(d.body.position, 1);
  });
});
