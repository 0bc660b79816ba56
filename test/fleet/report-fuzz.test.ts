/**
 * Property-based fuzzing of what devices send (issue #15 item 9): arbitrary JSON, mutated valid
 * check-ins and events (fields of the wrong type, unicode, huge numbers, long strings, big
 * arrays and deep nesting within the body limit, numbers JSON reads as Infinity), and broken
 * JSON text, posted to the real `ibu serve` (createServer, fleet plugin) with a valid device
 * token. Every answer is 2xx, or 4xx in the error shape with one of our codes, never 5xx; the
 * server keeps answering; the device's row stays sane and the admin views still serialize. Runs
 * on SQLite and, with IBU_TEST_PG, PostgreSQL. fast-check prints the seed and counterexample on
 * failure; the counterexamples found so far are fixed cases at the end.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { createServer, type IbuServer } from '../../src/server/app.js';
import { ERROR_CODES } from '../../src/errors.js';
import { isValidVersion } from '../../src/version.js';
import { BACKENDS } from './backends.js';
import { signed } from '../helpers/enroll.js';

const ADMIN = 'admin-token-for-fuzz';
const STATES = ['idle', 'preparing', 'prepared', 'applying', 'trial', 'committed', 'rolled-back', 'failed'];

const VALID_CHECKIN = { version: '1', state: 'idle', trial: false, committedVersion: '1', freeBytes: 1_000_000, lastError: null, wantRebootLease: false };
const VALID_EVENT = { type: 'apply-started', fromVersion: '1', toVersion: '2', at: '2026-11-02T10:00:00Z', error: { code: 'X', message: 'm' } };

/** Values that break naive handlers: wrong types, edges of numbers, odd strings, big and deep shapes. */
const hostile: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  { weight: 3, arbitrary: fc.oneof(fc.double(), fc.integer(), fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }).map(Number)) },
  fc.constantFrom(
    1e308,
    -1e308,
    2 ** 63,
    -1,
    0.5,
    -0,
    Number.MAX_SAFE_INTEGER + 2,
    '',
    '1',
    'true',
    'null',
    '\u0000',
    '\ud800',
    '🦄'.repeat(20),
    true,
    null,
    [],
    {},
  ),
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.constantFrom(...STATES, 'upgrade-succeeded', 'boot-fallback', 'bootenv-repaired', '2', '1.0', '../x'),
  fc.nat({ max: 200_000 }).map((n) => 'x'.repeat(n)),
  fc.nat({ max: 30_000 }).map((n) => Array.from({ length: n }, (_, i) => i)),
  fc.integer({ min: 1, max: 500 }).map((d) => JSON.parse('['.repeat(d) + ']'.repeat(d)) as unknown),
  fc.record({ code: fc.oneof(fc.string(), fc.constant(1)), message: fc.oneof(fc.string(), fc.constant(null)) }, { requiredKeys: [] }),
);

function mutated(valid: Record<string, unknown>, extra: string[]): fc.Arbitrary<Record<string, unknown>> {
  const field = fc.constantFrom(...Object.keys(valid), ...extra, '__proto__', 'constructor');
  const edit = fc.record({ field, value: hostile, remove: fc.boolean() });
  return fc.array(edit, { minLength: 1, maxLength: 4 }).map((edits) => {
    const b: Record<string, unknown> = { ...valid };
    for (const e of edits) {
      if (e.remove) delete b[e.field];
      else Object.defineProperty(b, e.field, { value: e.value, enumerable: true, writable: true, configurable: true });
    }
    return b;
  });
}

/** A body as text: JSON of a value, or JSON text broken or changed at the byte level. */
function bodies(valid: Record<string, unknown>, extra: string[]): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 5, arbitrary: mutated(valid, extra).map((b) => JSON.stringify(b)) },
    { weight: 2, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v) ?? 'null') },
    { weight: 1, arbitrary: fc.anything({ maxDepth: 2 }).map((v) => JSON.stringify(v) ?? '') },
    {
      weight: 1,
      // Numbers JSON.parse reads as Infinity or loses, in place of a valid number.
      arbitrary: fc
        .constantFrom('1e999', '-1e999', '123456789012345678901234567890', '1e-999', '-0')
        .map((n) => `{"freeBytes":${n},${JSON.stringify(valid).slice(1)}`),
    },
    {
      weight: 1,
      // Nesting deeper than a recursive walk survives, written as text (JSON.stringify would overflow here).
      arbitrary: fc
        .tuple(fc.constantFrom(...Object.keys(valid), 'extra'), fc.integer({ min: 1_000, max: 200_000 }), fc.constantFrom('[]', '{"a":}'))
        .map(([k, d, pair]) => {
          const [open, close] = pair === '[]' ? ['[', ']'] : ['{"a":', '}'];
          return `{"${k}":${open.repeat(d)}1${close.repeat(d)},${JSON.stringify(valid).slice(1)}`;
        }),
    },
    {
      weight: 1,
      arbitrary: fc.tuple(fc.nat(), fc.string({ unit: 'binary', maxLength: 4 })).map(([at, s]) => {
        const t = JSON.stringify(valid);
        const i = at % t.length;
        return t.slice(0, i) + s + t.slice(i + 1);
      }),
    },
  );
}

for (const backend of BACKENDS) describe(`check-in and event bodies fuzzed on ${backend.name}`, { skip: backend.skip }, () => suite(backend));

function suite(backend: (typeof BACKENDS)[number]): void {
  let dir: string;
  let srv: IbuServer;
  let token: string;
  let cleanup: (() => Promise<void>) | undefined;

  async function call(method: 'GET' | 'POST', url: string, payload?: string, auth = ADMIN): Promise<{ status: number; body: string }> {
    const res = await srv.app.inject({
      method,
      url,
      headers: { authorization: `Bearer ${auth}`, ...(payload !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(payload !== undefined ? { payload } : {}),
    });
    return { status: res.statusCode, body: res.body };
  }

  /** 2xx with JSON, or 4xx in our error shape with a code of ours; a 5xx fails. */
  function assertAnswer(r: { status: number; body: string }, what: string): void {
    const j = JSON.parse(r.body) as { error?: { code?: unknown; message?: unknown } };
    if (r.status >= 200 && r.status < 300) return;
    assert.ok(r.status >= 400 && r.status < 500, `${what} answered ${r.status}: ${r.body.slice(0, 300)}`);
    assert.ok((ERROR_CODES as readonly unknown[]).includes(j.error?.code), `${what}: not our error shape: ${r.body.slice(0, 300)}`);
    assert.equal(typeof j.error?.message, 'string');
  }

  before(async () => {
    const made = await backend.make();
    // The server opens the database itself; the backend only made it (and drops it at the end).
    await made.repo.close();
    cleanup = made.cleanup;
    dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-fuzz-'));
    mkdirSync(path.join(dir, 'channels'));
    writeFileSync(path.join(dir, 'channels', 'stable.json'), JSON.stringify({ channel: 'stable', versions: ['1', '2'], latest: '2' }));
    srv = await createServer({
      dataDir: dir,
      adminToken: ADMIN,
      workers: 0,
      precompute: 0,
      rescanIntervalMs: 0,
      logger: false,
      ...(made.url ? { databaseUrl: made.url } : {}),
    });
    await srv.app.listen({ host: '127.0.0.1', port: 0 });
    const pre = await call('POST', '/v1/admin/fleet/devices/preauthorize', JSON.stringify({ ids: ['d1'], channel: 'stable' }));
    assert.equal(pre.status, 200, pre.body);
    const en = await call('POST', '/v1/devices/enroll', JSON.stringify(signed({ deviceId: 'd1', channel: 'stable' })));
    assert.equal(en.status, 200, en.body);
    token = (JSON.parse(en.body) as { token: string }).token;
    // A running rollout, so check-ins and events also touch participations.
    for (const v of ['1', '2']) assertAnswer(await call('POST', '/v1/admin/fleet/releases', JSON.stringify({ channel: 'stable', version: v })), 'release');
    const ro = await call(
      'POST',
      '/v1/admin/fleet/rollouts',
      JSON.stringify({ channel: 'stable', version: '2', spec: { waves: [100], minSample: 1000, maxFailures: 0 } }),
    );
    assertAnswer(ro, 'rollout');
    assert.equal((await call('POST', '/v1/devices/d1/checkin', JSON.stringify(VALID_CHECKIN), token)).status, 200);
  });
  after(async () => {
    await srv?.app.close();
    await cleanup?.();
    rmSync(dir, { recursive: true, force: true });
  });

  /** After the fuzzing: a valid check-in still answers, the row is sane, the admin views serialize. */
  async function assertSane(): Promise<void> {
    // Over a real socket too, not only through inject.
    const a = srv.app.server.address();
    const port = typeof a === 'object' && a ? a.port : 0;
    const ok = await fetch(`http://127.0.0.1:${port}/v1/devices/d1/checkin`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(VALID_CHECKIN),
    });
    assert.equal(ok.status, 200, await ok.text());
    const dev = await call('GET', '/v1/admin/fleet/devices/d1');
    assert.equal(dev.status, 200, dev.body);
    const d = JSON.parse(dev.body) as Record<string, unknown> & { device?: Record<string, unknown> };
    const row = (d.device ?? d) as Record<string, unknown>;
    assert.ok(typeof row.version === 'string' && isValidVersion(row.version), dev.body.slice(0, 300));
    assert.ok(STATES.includes(String(row.state)), dev.body.slice(0, 300));
    assert.ok(Array.isArray(row.flags) && row.flags.every((f) => typeof f === 'string'));
    for (const [k, v] of Object.entries(row)) assert.ok(typeof v !== 'number' || Number.isFinite(v), `${k} is ${v}`);
    for (const url of ['/v1/admin/fleet/devices', '/v1/admin/fleet/summary', '/v1/admin/fleet/devices/problems', '/v1/admin/fleet/rollouts']) {
      const r = await call('GET', url);
      assert.equal(r.status, 200, `${url}: ${r.body.slice(0, 300)}`);
      JSON.parse(r.body);
    }
  }

  it('fuzzed check-in bodies: 2xx or 4xx in the error shape, never 5xx', async () => {
    const tally: Record<number, number> = {};
    await fc.assert(
      fc.asyncProperty(bodies(VALID_CHECKIN, ['preparedVersion', 'extra']), fc.boolean(), async (body, goodToken) => {
        const r = await call('POST', '/v1/devices/d1/checkin', body, goodToken ? token : 'wrong');
        assertAnswer(r, `check-in ${body.slice(0, 200)}`);
        tally[r.status] = (tally[r.status] ?? 0) + 1;
      }),
      { numRuns: 400 },
    );
    assert.ok((tally[200] ?? 0) > 10 && (tally[400] ?? 0) > 50, JSON.stringify(tally));
    await assertSane();
  });

  it('fuzzed event bodies: 2xx or 4xx in the error shape, never 5xx', async () => {
    const tally: Record<number, number> = {};
    await fc.assert(
      fc.asyncProperty(bodies(VALID_EVENT, ['extra']), fc.boolean(), async (body, goodToken) => {
        const r = await call('POST', '/v1/devices/d1/events', body, goodToken ? token : 'wrong');
        assertAnswer(r, `event ${body.slice(0, 200)}`);
        tally[r.status] = (tally[r.status] ?? 0) + 1;
      }),
      { numRuns: 400 },
    );
    assert.ok((tally[200] ?? 0) > 10 && (tally[400] ?? 0) > 50, JSON.stringify(tally));
    await assertSane();
  });

  // Counterexamples the properties above found, kept as fixed cases.

  it('regression: freeBytes that is not a whole number of bytes (0.5, 2^63, 1e308, -1) is 400, not a 500 from the database', async () => {
    for (const freeBytes of [0.5, 2 ** 63, 1e308, -1]) {
      const r = await call('POST', '/v1/devices/d1/checkin', JSON.stringify({ ...VALID_CHECKIN, freeBytes }), token);
      assert.equal(r.status, 400, `${freeBytes}: ${r.body}`);
      assertAnswer(r, String(freeBytes));
    }
    // Infinity (1e999 in the text) is refused by the schema already.
    const inf = await call(
      'POST',
      '/v1/devices/d1/checkin',
      `{"freeBytes":1e999,${JSON.stringify({ ...VALID_CHECKIN, freeBytes: undefined }).slice(1)}`,
      token,
    );
    assert.equal(inf.status, 400, inf.body);
    await assertSane();
  });

  it('an empty error object in a check-in or an event is accepted and stored as no error', async () => {
    for (const [url, body] of [
      ['/v1/devices/d1/checkin', { ...VALID_CHECKIN, lastError: {} }],
      ['/v1/devices/d1/events', { ...VALID_EVENT, error: {} }],
    ] as const) {
      const r = await call('POST', url, JSON.stringify(body), token);
      assert.equal(r.status, 200, r.body);
    }
    const dev = JSON.parse((await call('GET', '/v1/admin/fleet/devices/d1')).body) as { lastErrorCode: unknown };
    assert.equal(dev.lastErrorCode, null);
    await assertSane();
  });
}
