import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { request } from 'undici';
import { ServerProcess } from '../../src/fleet/simulator/server-process.js';
import { BACKENDS } from './backends.js';
import { signed } from '../helpers/enroll.js';

/**
 * Replicas: two real `ibu serve` processes (the simulator's server child: createServer with the
 * fleet plugin, each on its own data dir) on one PostgreSQL database. Check-ins of one group hit
 * both at once and the group's reboot-lease limit holds; what one replica writes (a release, a
 * rollout, a pause, a group) the other serves within milliseconds (LISTEN/NOTIFY; the time is
 * printed); one replica evaluates rollouts, and when it is killed the other takes over.
 */
const pgBackend = BACKENDS.find((b) => b.name === 'postgres')!;
const ADMIN = 'replica-admin-token';
const SECRET = 'replica-enroll';
const DEVICES = 60;
const MAX_REBOOTS = 5;

describe('replicas on one PostgreSQL', { skip: pgBackend.skip }, () => {
  const dirs: string[] = [];
  let servers: ServerProcess[] = [];
  let cleanup: (() => Promise<void>) | undefined;
  const tokens = new Map<string, string>();

  before(async () => {
    const made = await pgBackend.make();
    cleanup = made.cleanup;
    await made.repo.close(); // the servers make their own
    for (let i = 0; i < 2; i++) {
      const dataDir = mkdtempSync(path.join(os.tmpdir(), `ibu-replica-${i}-`));
      dirs.push(dataDir);
      servers.push(new ServerProcess({ dataDir, adminToken: ADMIN, databaseUrl: made.url }));
    }
    // One after the other: the schema is created under an advisory lock either way.
    await Promise.all(servers.map((s) => s.start()));
  });

  after(async () => {
    await Promise.all(servers.map((s) => s.stop().catch(() => {})));
    await cleanup?.();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- test helper: answers are asserted field by field
  async function call(s: ServerProcess, method: 'GET' | 'POST' | 'PUT', p: string, body?: unknown, token = ADMIN): Promise<{ status: number; json: any }> {
    const res = await request(s.origin + p, {
      method,
      headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), authorization: `Bearer ${token}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.body.text();
    return { status: res.statusCode, json: text ? JSON.parse(text) : null };
  }

  /** Polls `read` on a replica until `ok`; returns how long it took (ms). */
  async function until(what: string, read: () => Promise<boolean>, limitMs = 10_000): Promise<number> {
    const t0 = performance.now();
    while (!(await read())) {
      if (performance.now() - t0 > limitMs) assert.fail(`${what}: not seen within ${limitMs} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
    return performance.now() - t0;
  }

  test('settings and groups written on one replica are served by the other', async () => {
    const [a, b] = servers as [ServerProcess, ServerProcess];
    assert.equal((await call(a, 'PUT', '/v1/admin/fleet/settings', { enrollmentSecret: SECRET, evaluateEveryMs: 200 })).status, 200);
    assert.equal((await call(a, 'PUT', '/v1/admin/fleet/groups/racks', { maxConcurrentReboots: MAX_REBOOTS, leaseTtlSeconds: 600 })).status, 200);
    const ms = await until('group on replica b', async () =>
      (await call(b, 'GET', '/v1/admin/fleet/summary')).json.groups.some((g: { name: string; maxConcurrentReboots: number }) => g.name === 'racks'),
    );
    console.log(`# a group written on replica a was served by replica b after ${ms.toFixed(1)} ms`);
    // The enrollment secret set on a works on b (settings reloaded there).
    for (let i = 0; i < DEVICES; i++) {
      const id = `rep-${String(i).padStart(3, '0')}`;
      const via = servers[i % 2]!;
      let r = await call(via, 'POST', '/v1/devices/enroll', signed({ deviceId: id, enrollmentSecret: SECRET, group: 'racks' }), '');
      for (let k = 0; r.status === 401 && k < 500; k++) {
        await new Promise((res) => setTimeout(res, 5)); // b may still be reloading the settings
        r = await call(via, 'POST', '/v1/devices/enroll', signed({ deviceId: id, enrollmentSecret: SECRET, group: 'racks' }), '');
      }
      assert.equal(r.status, 200, JSON.stringify(r.json));
      tokens.set(id, r.json.token);
    }
  });

  test('check-ins of one group on both replicas at once never exceed its reboot-lease limit', async () => {
    const ids = [...tokens.keys()];
    const want = (s: ServerProcess, id: string) =>
      call(s, 'POST', `/v1/devices/${id}/checkin`, { version: '1.0.0', state: 'prepared', trial: false, wantRebootLease: true }, tokens.get(id));
    for (let round = 0; round < 3; round++) {
      // Every device asks both replicas at the same moment, three times over.
      const answers = await Promise.all(ids.flatMap((id) => servers.map((s) => want(s, id).then((r) => ({ id, r })))));
      const granted = new Set(answers.filter((x) => x.r.status === 200 && x.r.json.rebootLease.granted).map((x) => x.id));
      assert.ok(answers.every((x) => x.r.status === 200));
      assert.equal(granted.size, MAX_REBOOTS, `round ${round}: exactly the limit is granted across both replicas (${[...granted].join(' ')})`);
      const summary = (await call(servers[round % 2]!, 'GET', '/v1/admin/fleet/summary')).json;
      assert.deepEqual(summary.leases.map((l: { deviceId: string }) => l.deviceId).sort(), [...granted].sort(), 'both replicas show the same leases');
      // The holders finish: their leases go back, through the other replica.
      for (const id of granted) {
        const r = await call(servers[(round + 1) % 2]!, 'POST', `/v1/devices/${id}/lease/release`, undefined, tokens.get(id));
        assert.ok(r.status < 300, JSON.stringify(r.json));
        tokens.delete(id); // done: it asks no more
        ids.splice(ids.indexOf(id), 1);
      }
    }
  });

  test('a release and a rollout made on one replica, paused on the other, never overwritten by the evaluator', async () => {
    const [a, b] = servers as [ServerProcess, ServerProcess];
    assert.equal((await call(a, 'POST', '/v1/admin/fleet/releases', { channel: 'stable', version: '1.0.0' })).status, 200);
    assert.equal((await call(a, 'POST', '/v1/admin/fleet/releases', { channel: 'stable', version: '2.0.0' })).status, 200);
    const seen = await until('release on replica b', async () =>
      (await call(b, 'GET', '/v1/admin/fleet/releases?channel=stable')).json.some((r: { version: string }) => r.version === '2.0.0'),
    );
    console.log(`# a release registered on replica a was served by replica b after ${seen.toFixed(1)} ms`);
    const created = await call(b, 'POST', '/v1/admin/fleet/rollouts', { channel: 'stable', version: '2.0.0', spec: { waves: [100], minSample: 1000 } });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const id = created.json.id as number;
    // A second rollout of the same release from the other replica is refused (checked in the database, not a cache).
    const twice = await call(a, 'POST', '/v1/admin/fleet/rollouts', { channel: 'stable', version: '2.0.0' });
    assert.equal(twice.status, 409, JSON.stringify(twice.json));
    // A device checking in on replica a is offered the rollout made on b.
    const [dev] = [...tokens.keys()];
    const c = await call(a, 'POST', `/v1/devices/${dev}/checkin`, { version: '1.0.0', state: 'idle', trial: false }, tokens.get(dev!));
    assert.equal(c.json.target?.version, '2.0.0');
    const paused = await call(a, 'POST', `/v1/admin/fleet/rollouts/${id}/pause`, { reason: 'looking at it' });
    assert.equal(paused.status, 200, JSON.stringify(paused.json));
    const ms = await until('pause on replica b', async () => (await call(b, 'GET', `/v1/admin/fleet/rollouts/${id}?brief=1`)).json.state === 'paused');
    console.log(`# a pause on replica a was served by replica b after ${ms.toFixed(1)} ms`);
    // Several evaluation rounds later it is still paused, and devices are no longer offered it on either replica.
    await new Promise((r) => setTimeout(r, 1000));
    for (const s of servers) {
      assert.equal((await call(s, 'GET', `/v1/admin/fleet/rollouts/${id}?brief=1`)).json.state, 'paused');
      const again = await call(s, 'POST', `/v1/devices/${dev}/checkin`, { version: '1.0.0', state: 'idle', trial: false }, tokens.get(dev!));
      assert.equal(again.json.target, null);
    }
  });

  test('one replica evaluates; when it dies the other takes over', async () => {
    const evaluators = async () => {
      const out: boolean[] = [];
      for (const s of servers) out.push(Boolean((await call(s, 'GET', '/v1/admin/fleet/summary')).json.stats.evaluator));
      return out;
    };
    await until('an evaluator', async () => (await evaluators()).some(Boolean));
    const now = await evaluators();
    assert.equal(now.filter(Boolean).length, 1, `exactly one evaluator: ${JSON.stringify(now)}`);
    const leader = now.indexOf(true);
    const other = servers[1 - leader]!;
    await servers[leader]!.kill();
    const ms = await until('the other replica evaluating', async () => Boolean((await call(other, 'GET', '/v1/admin/fleet/summary')).json.stats.evaluator));
    console.log(`# the evaluator was killed; the other replica took over after ${ms.toFixed(0)} ms`);
    servers = [other];
  });
});
