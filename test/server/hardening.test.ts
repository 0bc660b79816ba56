import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import { get, start, tmpDir, type Running } from './helpers.js';
import { signed } from '../helpers/enroll.js';

/** Raw HTTP/1.1 exchange, so requests undici would refuse to send (bad escapes, huge URLs) reach the server. */
function raw(url: string, text: string): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(u.port), u.hostname, () => s.end(text));
    let buf = '';
    s.setEncoding('latin1');
    s.on('data', (d: string) => (buf += d));
    s.on('error', reject);
    s.on('close', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(buf)?.[1] ?? 0);
      resolve({ status, body: buf.slice(buf.indexOf('\r\n\r\n') + 4) });
    });
  });
}

function assertErrorShape(body: string, code: string): void {
  const j = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
  assert.equal(j.error?.code, code, body);
  assert.equal(typeof j.error?.message, 'string', body);
}

describe('issue #15 hardening: framework errors, field caps', () => {
  const work = tmpDir('harden');
  let srv: Running;
  before(async () => {
    srv = await start({ dataDir: work, adminToken: 'sesame', precompute: 0, fleet: true });
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('a bad escape (%ff) in a path answers in the project error shape', async () => {
    const r = await raw(srv.url, 'GET /v1/releases/%ff/manifest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.equal(r.status, 400);
    assertErrorShape(r.body, 'BAD_REQUEST');
  });

  it('a too-long URL answers in the project error shape', async () => {
    const r = await raw(srv.url, `GET /v1/releases/${'a'.repeat(100_000)}/manifest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    assert.ok(r.status === 414 || r.status === 431 || r.status === 400, String(r.status));
    assertErrorShape(r.body, 'BAD_REQUEST');
  });

  it('check-in and event fields are length-capped (400 before any lookup)', async () => {
    const big = 'x'.repeat(100_000);
    const bodies = [
      { version: '1', state: big, trial: false },
      { version: '1', state: 'idle', trial: false, lastError: { code: big, message: 'm' } },
      { version: '1', state: 'idle', trial: false, lastError: { code: 'X', message: big } },
    ];
    for (const b of bodies) {
      const r = await get(`${srv.url}/v1/devices/d1/checkin`, { authorization: 'Bearer t' }, 'POST', JSON.stringify(b));
      assert.equal(r.status, 400, JSON.stringify(b).slice(0, 80));
    }
    const ev = await get(
      `${srv.url}/v1/devices/d1/events`,
      { authorization: 'Bearer t' },
      'POST',
      JSON.stringify({ type: big, fromVersion: '1', toVersion: '2' }),
    );
    assert.equal(ev.status, 400);
    const en = await get(`${srv.url}/v1/devices/enroll`, {}, 'POST', JSON.stringify({ deviceId: big }));
    assert.equal(en.status, 400);
  });

  it('versions in reports are checked (a check-in with a bad version is 400)', async () => {
    const r = await get(
      `${srv.url}/v1/devices/d1/checkin`,
      { authorization: 'Bearer t' },
      'POST',
      JSON.stringify({ version: '../x', state: 'idle', trial: false }),
    );
    assert.equal(r.status, 400);
  });

  it('the enroll refusal names the preauthorize route that exists', async () => {
    const r = await get(`${srv.url}/v1/devices/enroll`, {}, 'POST', JSON.stringify(signed({ deviceId: 'nobody' })));
    const msg = String((r.json().error as { message: string }).message);
    assert.match(msg, /\/v1\/admin\/fleet\/devices\/preauthorize/);
  });
});

describe('issue #15 hardening: per-client rate limit on unauthenticated routes', () => {
  const work = tmpDir('ratelimit');
  let srv: Running;
  before(async () => {
    srv = await start({ dataDir: work, adminToken: 'sesame', precompute: 0, fleet: true, connections: { unauthenticatedPerMinute: 20 } });
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('enrollment and dashboard sign-in answer 429 RATE_LIMITED past the per-client limit', async () => {
    for (const [url, body] of [
      [`${srv.url}/v1/devices/enroll`, JSON.stringify({ deviceId: 'nobody' })],
      [`${srv.url}/dashboard/sign-in`, JSON.stringify({ token: 'guess' })],
    ] as const) {
      const statuses: number[] = [];
      let last: Record<string, unknown> = {};
      for (let i = 0; i < 40; i++) {
        const r = await get(url, {}, 'POST', body);
        statuses.push(r.status);
        if (r.status === 429) last = r.json();
      }
      assert.ok(statuses.includes(429), `${url}: ${statuses.join(',')}`);
      assert.equal((last.error as { code: string }).code, 'RATE_LIMITED');
    }
  });
});

describe('issue #15 hardening: crash leftovers', () => {
  it('a restart removes every delta work directory a killed build left behind', async () => {
    const work = tmpDir('leftovers');
    const deltas = `${work}/cache/deltas`;
    await fsp.mkdir(`${deltas}/.ibudelta-work-abc123`, { recursive: true });
    await fsp.writeFile(`${deltas}/.ibudelta-work-abc123/seg-0.zst`, Buffer.alloc(1 << 20, 1));
    const srv = await start({ dataDir: work, precompute: 0 });
    try {
      assert.deepEqual(
        (await fsp.readdir(deltas)).filter((n) => n.startsWith('.ibudelta-work-')),
        [],
      );
    } finally {
      await srv.close();
      await fsp.rm(work, { recursive: true, force: true });
    }
  });
});

describe('issue #15 hardening: the delta quota counts builds in progress', () => {
  it('work directories and partial files of running builds add to the used bytes', async () => {
    const work = tmpDir('inprogress');
    const srv = await start({ dataDir: work, precompute: 0 });
    try {
      const deltas = `${work}/cache/deltas`;
      await fsp.mkdir(`${deltas}/.ibudelta-work-live`, { recursive: true });
      await fsp.writeFile(`${deltas}/.ibudelta-work-live/seg-0.zst`, Buffer.alloc(1 << 20, 1));
      await fsp.writeFile(`${deltas}/1_2.ibudelta.abc.partial`, Buffer.alloc(1 << 20, 2));
      assert.ok((await srv.ctx.deltas.cache.inProgressBytes()) >= 2 << 20);
    } finally {
      await srv.close();
      await fsp.rm(work, { recursive: true, force: true });
    }
  });
});
