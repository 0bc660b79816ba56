import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { request } from 'undici';
import { fleetPlugin } from '../../src/server/fleet/plugin.js';
import { main } from '../../src/cli/ibu.js';
import { EXIT } from '../../src/cli/exit-codes.js';
import '../../src/server/contracts.js';
import { BACKENDS } from './backends.js';
import { signed } from '../helpers/enroll.js';

let dir: string;
let app: FastifyInstance;
let base: string;
let cleanup: (() => Promise<void>) | undefined;
const ADMIN = 'admin-token-for-tests';

// The same suite on each backend (SQLite and PostgreSQL); each run gets a fresh database.
for (const backend of BACKENDS) describe(`fleet HTTP API on ${backend.name}`, { skip: backend.skip }, () => suite(backend));

function suite(backend: (typeof BACKENDS)[number]): void {
  before(async () => {
    const made = await backend.make();
    cleanup = made.cleanup;
    dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-http-'));
    // The release store as `ibu release publish` leaves it: the plugin reads channels/*.json.
    mkdirSync(path.join(dir, 'channels'));
    writeFileSync(path.join(dir, 'channels', 'stable.json'), JSON.stringify({ channel: 'stable', versions: ['1', '2'], latest: '2' }));
    app = Fastify();
    // The delta side is another module (src/server); here a stand-in says which pairs are built.
    const status = async (from: string, to: string) => (from === '1' && to === '2' ? 'ready' : 'none');
    app.decorate('deltas', { status, deviceNeeds: status, request: async () => 'queued' as const });
    await app.register(fleetPlugin, { dataDir: dir, adminToken: ADMIN, enrollmentSecret: 'enroll-me', storeSyncMs: 0, repository: made.repo });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const a = app.server.address();
    base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  });
  after(async () => {
    await app?.close();
    await cleanup?.();
    rmSync(dir, { recursive: true, force: true });
  });

  async function call(method: 'GET' | 'POST' | 'PUT', p: string, body?: unknown, token?: string) {
    const res = await request(base + p, {
      method,
      headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.body.text();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- test helper: responses are asserted field by field
    let json: any = null;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    return { status: res.statusCode, json, headers: res.headers };
  }

  /** Runs `ibu ...` in-process and captures stdout and the exit status. */
  async function ibu(...argv: string[]): Promise<{ out: string; code: number }> {
    const write = process.stdout.write.bind(process.stdout);
    const ewrite = process.stderr.write.bind(process.stderr);
    let out = '';
    // Under `node --test` the runner's own messages go to stdout as Buffers: pass those through.
    process.stdout.write = ((s: string | Uint8Array, ...rest: unknown[]) => {
      if (typeof s !== 'string') return (write as (...a: unknown[]) => boolean)(s, ...rest);
      out += s;
      return true;
    }) as typeof process.stdout.write;
    process.stderr.write = (() => true) as typeof process.stderr.write;
    process.exitCode = 0;
    try {
      await main(argv);
    } finally {
      process.stdout.write = write;
      process.stderr.write = ewrite;
    }
    const code = Number(process.exitCode ?? 0);
    process.exitCode = 0;
    return { out, code };
  }

  let token = '';

  test('device protocol over HTTP: enroll, check in, events, errors with codes', async () => {
    let r = await call('POST', '/v1/devices/enroll', signed({ deviceId: 'box-1', enrollmentSecret: 'wrong' }));
    assert.equal(r.status, 401);
    assert.equal(r.json.error.code, 'UNAUTHORIZED');
    r = await call('POST', '/v1/devices/enroll', signed({ deviceId: 'box-1', enrollmentSecret: 'enroll-me', group: 'lab' }));
    assert.equal(r.status, 200);
    token = r.json.token;
    r = await call('POST', '/v1/devices/box-1/checkin', { version: '1', state: 'idle', trial: false, freeBytes: 1e9 }, token);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.deepEqual(r.json.target, { version: '2', mandatory: false, manifestUrl: '/v1/releases/2/manifest' }, 'releases came from channels/stable.json');
    assert.equal(r.json.deltaReady, true);
    assert.equal(r.json.window, null);
    assert.deepEqual(r.json.rebootLease, { granted: false });
    assert.ok(r.json.nextCheckinSeconds > 0);
    r = await call('POST', '/v1/devices/box-1/checkin', { version: '1', state: 'idle', trial: false }, 'bad-token');
    assert.equal(r.status, 401);
    const wrongToken = r.json;
    r = await call('POST', '/v1/devices/nobody/checkin', { version: '1', state: 'idle', trial: false }, token);
    assert.equal(r.status, 401);
    assert.deepEqual(r.json, wrongToken, 'an unknown id and a wrong token get the same answer');
    r = await call('POST', '/v1/devices/box-1/checkin', { version: '../1', state: 'idle', trial: false }, token);
    assert.equal(r.status, 400);
    assert.equal(r.json.error.code, 'BAD_REQUEST');
    r = await call('POST', '/v1/devices/box-1/checkin', { state: 'idle' }, token);
    assert.equal(r.status, 400);
    r = await call('POST', '/v1/devices/box-1/events', { type: 'exploded', fromVersion: '1', toVersion: '2' }, token);
    assert.equal(r.status, 400);
    r = await call(
      'POST',
      '/v1/devices/box-1/events',
      { type: 'prepare-failed', fromVersion: '1', toVersion: '2', error: { code: 'NO_SPACE', message: 'disk full' } },
      token,
    );
    assert.deepEqual(r.json, { ok: true });
    r = await call('POST', '/v1/devices/box-1/lease/release', {}, token);
    assert.deepEqual(r.json, { ok: true });
    assert.deepEqual(await app.fleet!.versionCounts(), [{ version: '1', devices: 1 }]);
  });

  test('admin API needs the token; settings, groups, preauthorization, device listing', async () => {
    assert.equal((await call('GET', '/v1/admin/fleet/summary')).status, 401);
    assert.equal((await call('GET', '/v1/admin/fleet/summary', undefined, 'nope')).status, 401);
    let r = await call(
      'PUT',
      '/v1/admin/fleet/groups/lab',
      { maxConcurrentReboots: 1, window: { timeZone: 'UTC', rules: [{ days: [0, 1, 2, 3, 4, 5, 6], start: '00:00', end: '00:00' }] } },
      ADMIN,
    );
    assert.equal(r.status, 200, JSON.stringify(r.json));
    r = await call('PUT', '/v1/admin/fleet/groups/lab', { window: { timeZone: 'Atlantis', rules: [] } }, ADMIN);
    assert.equal(r.status, 400);
    assert.equal(r.json.error.code, 'CONFIG_INVALID');
    r = await call('POST', '/v1/admin/fleet/devices/preauthorize', { ids: ['pre-9'], group: 'lab' }, ADMIN);
    assert.deepEqual(r.json, { added: 1 });
    r = await call('POST', '/v1/devices/enroll', signed({ deviceId: 'pre-9' }));
    assert.equal(r.status, 200);
    const t9 = r.json.token;
    r = await call('POST', '/v1/devices/pre-9/checkin', { version: '1', state: 'prepared', preparedVersion: '2', trial: false, wantRebootLease: true }, t9);
    assert.equal(r.json.rebootLease.granted, true);
    assert.equal(r.json.window.timeZone, 'UTC');
    r = await call('POST', '/v1/devices/box-1/checkin', { version: '1', state: 'prepared', preparedVersion: '2', trial: false, wantRebootLease: true }, token);
    assert.equal(r.json.rebootLease.granted, false, 'one concurrent reboot in group lab');
    r = await call('PUT', '/v1/admin/fleet/settings', { checkinIntervalSeconds: -1 }, ADMIN);
    assert.equal(r.json.error.code, 'CONFIG_INVALID');
    r = await call('GET', '/v1/admin/fleet/devices?limit=1', undefined, ADMIN);
    assert.equal(r.json.devices.length, 1);
    assert.equal(r.json.devices[0].tokenHash, undefined, 'never shows token hashes');
    r = await call('GET', `/v1/admin/fleet/devices?after=${r.json.next}`, undefined, ADMIN);
    assert.equal(r.json.devices.length, 1);
    r = await call('GET', '/v1/admin/fleet/devices/box-1', undefined, ADMIN);
    assert.equal(r.json.lastErrorCode, 'NO_SPACE');
  });

  test('`ibu rollout` and `ibu fleet` drive the admin API', async () => {
    const srv = ['--server', base, '--token', ADMIN];
    let r = await ibu('fleet', 'release', '--version', '3', '--mandatory', ...srv, '--json');
    assert.equal(r.code, 0);
    assert.equal(JSON.parse(r.out).mandatory, true);
    r = await ibu('rollout', 'start', '--version', '3', '--waves', '50,100', '--canary', 'lab', '--max-failure-ratio', '0.2', ...srv, '--json');
    assert.equal(r.code, 0, r.out);
    const ro = JSON.parse(r.out);
    assert.equal(ro.state, 'running');
    assert.deepEqual(
      ro.waves.map((w: { label: string }) => w.label),
      ['canary (lab)', '50%', '100%'],
    );
    assert.equal((await ibu('rollout', 'start', '--version', '3', ...srv)).code, EXIT.FAILURE, 'CONFLICT: one rollout per release');
    assert.equal((await ibu('rollout', 'start', '--version', '3', '--waves', '10,5', ...srv)).code, EXIT.FAILURE);
    r = await ibu('rollout', 'pause', String(ro.id), '--reason', 'night shift', ...srv, '--json');
    assert.equal(JSON.parse(r.out).state, 'paused');
    assert.match(JSON.parse(r.out).reason, /night shift/);
    r = await ibu('rollout', 'resume', String(ro.id), ...srv, '--json');
    assert.equal(JSON.parse(r.out).state, 'running');
    r = await ibu('rollout', 'list', ...srv);
    assert.match(r.out, /rollout \d+: stable -> 3 {2}running/);
    r = await ibu('rollout', 'abort', String(ro.id), ...srv, '--json');
    assert.equal(JSON.parse(r.out).state, 'aborted');
    assert.equal((await ibu('rollout', 'resume', String(ro.id), ...srv)).code, EXIT.FAILURE, 'an aborted rollout cannot resume');
    assert.equal((await ibu('rollout', 'list', '--server', base, '--token', 'wrong')).code, EXIT.NETWORK);
    assert.equal((await ibu('rollout', 'show', 'abc', ...srv)).code, EXIT.USAGE);
    assert.equal((await ibu('rollout', 'list', '--token', ADMIN, '--server', 'not a url')).code, EXIT.USAGE);
    r = await ibu('fleet', 'status', ...srv);
    assert.match(r.out, /2 devices enrolled/);
    // Factory secrets from the vendor's list (hashes only), then one device enrolls with its own secret, once.
    const list = path.join(dir, 'secrets.txt');
    writeFileSync(list, `# id sha256(secret)\nfac-1 ${createHash('sha256').update('f1').digest('hex')}\n`);
    r = await ibu('fleet', 'factory-secrets', list, '--group', 'lab', ...srv, '--json');
    assert.deepEqual(JSON.parse(r.out), { added: 1 });
    writeFileSync(list, 'fac-2 not-a-hash\n');
    assert.equal((await ibu('fleet', 'factory-secrets', list, ...srv)).code, EXIT.USAGE);
    let e = await call('POST', '/v1/devices/enroll', signed({ deviceId: 'fac-1', enrollmentSecret: 'enroll-me' }));
    assert.equal(e.status, 401, 'the fleet secret cannot claim an id with a factory secret');
    e = await call('POST', '/v1/devices/enroll', signed({ deviceId: 'fac-1', enrollmentSecret: 'f1' }));
    assert.equal(e.status, 200);
    const facToken = e.json.token;
    r = await ibu('fleet', 'reset-identity', 'fac-1', ...srv, '--json');
    assert.equal(JSON.parse(r.out).tokenRevoked, true, r.out);
    assert.equal(JSON.parse(r.out).publicKey, null);
    e = await call('POST', '/v1/devices/fac-1/checkin', { version: '1', state: 'idle', trial: false }, facToken);
    assert.equal(e.status, 401, 'the reset revoked the token');
    e = await call('POST', '/v1/devices/enroll', signed({ deviceId: 'fac-1', enrollmentSecret: 'f1' }));
    assert.equal(e.status, 401, 'a used factory secret does not enroll again');
    r = await ibu('fleet', 'group', 'lab', '--max-reboots', '4', ...srv, '--json');
    assert.equal(JSON.parse(r.out).maxConcurrentReboots, 4);
    assert.equal(JSON.parse(r.out).window.timeZone, 'UTC', 'a partial update keeps the window');
  });

  test('Prometheus metrics at /metrics', async () => {
    const r = await call('GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'] as string, /text\/plain/);
    assert.match(r.json, /ibu_fleet_checkins_total\{result="ok"\} \d+/);
    assert.match(r.json, /ibu_fleet_checkins_total\{result="UNAUTHORIZED"\} 3/);
    assert.match(r.json, /ibu_fleet_checkin_duration_seconds_bucket\{le="0.05"\} \d+/);
    assert.match(r.json, /ibu_fleet_devices\{version="1"\} 2/);
    assert.match(r.json, /ibu_fleet_rollout_state\{rollout="1",channel="stable",version="3",state="aborted"\} 1/);
    assert.match(r.json, /ibu_fleet_reboot_leases\{group="lab"\} 1/);
  });
}
