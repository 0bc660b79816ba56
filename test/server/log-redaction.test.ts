import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { Writable } from 'node:stream';
import { request } from 'undici';
import { get, start, tmpDir, type Running } from './helpers.js';
import { signed } from '../helpers/enroll.js';

// Issue #15 item 3: no credential reaches the request log, and the dashboard signs in without one in the URL.
describe('secrets stay out of the logs', () => {
  const work = tmpDir('logs');
  const TOKEN = 'sesame-0123456789-secret';
  let lines = '';
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines += chunk.toString('utf8');
      cb();
    },
  });
  let srv: Running;
  before(async () => {
    srv = await start({ dataDir: work, adminToken: TOKEN, precompute: 0, fleet: true, logger: { level: 'trace', stream } });
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('the sign-in form sets the HttpOnly cookie from a POST body; no token in any URL', async () => {
    const form = await get(`${srv.url}/dashboard/sign-in`);
    assert.equal(form.status, 200);
    assert.match(form.body.toString(), /<form[^>]*method="post"/);
    const res = await request(`${srv.url}/dashboard/sign-in`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `token=${encodeURIComponent(TOKEN)}`,
    });
    await res.body.dump();
    assert.equal(res.statusCode, 303);
    const cookie = String(res.headers['set-cookie']);
    assert.match(cookie, /HttpOnly/);
    const api = await get(`${srv.url}/v1/admin/fleet/summary`, { cookie: cookie.split(';')[0]! });
    assert.equal(api.status, 200);
    const bad = await request(`${srv.url}/dashboard/sign-in`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'token=wrong',
    });
    await bad.body.dump();
    assert.equal(bad.statusCode, 401);
  });

  it('tokens in the query, the Authorization header and bodies are redacted from the log', async () => {
    await get(`${srv.url}/dashboard?token=${TOKEN}`);
    await get(`${srv.url}/v1/admin/fleet/summary?token=${TOKEN}`, { authorization: `Bearer ${TOKEN}` });
    await get(`${srv.url}/v1/devices/enroll`, {}, 'POST', JSON.stringify(signed({ deviceId: 'd', enrollmentSecret: TOKEN })));
    await get(`${srv.url}/v1/devices/d/checkin`, { authorization: `Bearer ${TOKEN}` }, 'POST', JSON.stringify({ version: '1', state: 'x', trial: false }));
    assert.ok(lines.includes('/dashboard'), 'the requests were logged');
    assert.equal(
      lines.includes(TOKEN),
      false,
      lines
        .split('\n')
        .filter((l) => l.includes(TOKEN))
        .join('\n'),
    );
  });
});
