// test-needs: root (scripts/nginx-cdn.sh runs nginx)
/**
 * nginx as a caching proxy (assets/nginx/ibu-cdn.conf, started by scripts/nginx-cdn.sh) in front of
 * the real `ibu serve`: chunks and deltas cached, 202s never cached, ranges and resume through the
 * cache, and a device (the real agent) that enrolls, checks in and upgrades through it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Manifest } from '../../src/release/types.js';
import { cli, makeDevice } from './device.js';
import { storeServer } from './store-server.js';
import { freePort } from '../helpers/nginx-cdn.js';
import { formatEncoders } from '../../src/delta/encoder-set.js';
import { localEncoders } from '../../src/delta/recompressor.js';

const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../scripts/nginx-cdn.sh');

async function req(url: string, headers: Record<string, string> = {}, method = 'GET', body?: unknown) {
  const res = await fetch(url, {
    method,
    headers: body !== undefined ? { 'content-type': 'application/json', ...headers } : headers,
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

test('through nginx: chunks and deltas cached, 202 not, ranges and resume, and a device upgrades', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('nginx-cdn.sh installs and runs nginx as root');
  const dev = await makeDevice({ running: '1.0', releases: [{ version: '1.0' }, { version: '2.0' }] });
  const cdnDir = path.join(dev.dir, 'cdn');
  const { srv, close } = await storeServer(dev);
  // What reaches the origin, to tell cache hits from misses independently of nginx's own header.
  const origin: string[] = [];
  srv.app.addHook('onRequest', async (r) => void origin.push(`${r.method} ${r.url}`));
  const hits = (prefix: string) => origin.filter((u) => u.includes(prefix)).length;
  try {
    await srv.app.listen({ port: 0, host: '127.0.0.1' });
    const up = `127.0.0.1:${(srv.app.server.address() as AddressInfo).port}`;
    const listen = `127.0.0.1:${await freePort()}`;
    // Workers as root: the cache sits in the test's private (0700) temp directory.
    const env = { ...process.env, IBU_CDN_USER: 'root' };
    const { stdout } = await promisify(execFile)('bash', [script, 'start', cdnDir, listen, up], { timeout: 120_000, env });
    const cdn = stdout.trim();
    assert.equal(cdn, `http://${listen}`);

    // Chunks: the first GET misses, the second is served by nginx alone; ranges from the cached copy.
    const mr = await req(`${cdn}/v1/releases/2.0/manifest`);
    assert.equal(mr.status, 200, mr.body.toString());
    const m = JSON.parse(mr.body.toString()) as Manifest;
    const [c1, c2] = m.chunks.filter((c) => !c.zero && c.size > 2000);
    const u1 = `${cdn}/v1/chunks/${c1!.id}`;
    const a = await req(u1);
    assert.equal(a.status, 200);
    assert.equal(a.headers.get('x-cache-status'), 'MISS');
    const before = hits(c1!.id);
    const b = await req(u1);
    assert.equal(b.headers.get('x-cache-status'), 'HIT');
    assert.deepEqual(b.body, a.body);
    const r = await req(u1, { range: 'bytes=100-199' });
    assert.equal(r.status, 206);
    assert.equal(r.headers.get('content-range'), `bytes 100-199/${a.body.length}`);
    assert.deepEqual(r.body, a.body.subarray(100, 200));
    assert.equal(hits(c1!.id), before, 'hits and ranges of a cached chunk never reach the origin');
    // A Range request on an uncached chunk: nginx fetches it whole, answers the range, keeps the whole.
    const u2 = `${cdn}/v1/chunks/${c2!.id}`;
    const r2 = await req(u2, { range: 'bytes=0-9' });
    assert.equal(r2.status, 206);
    assert.equal(r2.body.length, 10);
    assert.equal((await req(u2)).headers.get('x-cache-status'), 'HIT');

    // Deltas: 202 while building is never cached (each poll reaches the origin), then 200 is.
    // As the device asks for it: with the encoders it can re-encode with (a variant of its own in the cache).
    const du = `${cdn}/v1/deltas/1.0/2.0?encoders=${encodeURIComponent(formatEncoders(localEncoders()))}`;
    const first = await req(du);
    assert.equal(first.status, 202);
    assert.notEqual(first.headers.get('x-cache-status'), 'HIT');
    let full: Awaited<ReturnType<typeof req>> | undefined;
    for (let i = 0; i < 300 && !full; i++) {
      const p = await req(du);
      if (p.status === 200) full = p;
      else {
        assert.equal(p.status, 202);
        await new Promise((res) => setTimeout(res, 500));
      }
    }
    assert.ok(full, 'the delta was built');
    const polls = hits('/v1/deltas/1.0/2.0');
    assert.ok(polls >= 2, `every 202 poll reached the origin (${polls})`);
    const again = await req(du);
    assert.equal(again.headers.get('x-cache-status'), 'HIT');
    assert.deepEqual(again.body, full.body);
    // Resume: the first part, then the rest with If-Range on the ETag, from the cache.
    const etag = again.headers.get('etag')!;
    const p1 = await req(du, { range: 'bytes=0-999' });
    const p2 = await req(du, { range: 'bytes=1000-', 'if-range': etag });
    assert.equal(p1.status, 206);
    assert.equal(p2.status, 206);
    assert.deepEqual(Buffer.concat([p1.body, p2.body]), full.body);
    assert.equal(hits('/v1/deltas/1.0/2.0'), polls, 'the built delta is served by the cache');

    // A device upgrades through the CDN: enrollment and check-ins pass through, the delta comes from the cache.
    const tokenFile = path.join(dev.dir, 'token');
    await dev.writeConfig({ server: { url: cdn, deviceId: 'box-1', tokenFile }, download: { maxRetryAfterSeconds: 1, deltaWaitSeconds: 300 } });
    const e = await cli(dev, ['enroll', '--secret', 'enroll-me', '--json']);
    assert.equal(e.code, 0, e.stderr);
    const admin = { authorization: 'Bearer admin-token' };
    await req(`${cdn}/v1/admin/fleet/releases`, admin, 'POST', { channel: 'stable', version: '1.0' });
    await req(`${cdn}/v1/admin/fleet/releases`, admin, 'POST', { channel: 'stable', version: '2.0' });
    const ro = await req(`${cdn}/v1/admin/fleet/rollouts`, admin, 'POST', { channel: 'stable', version: '2.0', spec: { waves: [100] } });
    assert.ok(ro.status < 300, ro.body.toString());
    assert.equal((await cli(dev, ['init', '--default', '1.0'])).code, 0);
    let c = await cli(dev, ['check', '--json']);
    assert.equal(c.code, 0, c.stderr);
    assert.equal((c.json!.target as { version: string } | null)?.version, '2.0', JSON.stringify(c.json));
    c = await cli(dev, ['prepare', '--json']);
    assert.equal(c.code, 0, c.stderr);
    assert.equal((c.json!.download as { method: string }).method, 'delta', c.stderr);
    assert.equal(hits('/v1/deltas/1.0/2.0'), polls, "the device's delta came from the cache");
    c = await cli(dev, ['apply', '--json']);
    assert.equal(c.json!.outcome, 'rebooting', c.stderr);
    await dev.boot();
    c = await cli(dev, ['confirm', '--json']);
    assert.equal(c.json!.outcome, 'committed', c.stderr);
    const device = JSON.parse((await req(`${cdn}/v1/admin/fleet/devices/box-1`, admin)).body.toString()) as Record<string, unknown>;
    assert.equal(device.version, '2.0', JSON.stringify(device));
    // The access log shows the device's requests went through nginx.
    const log = await fsp.readFile(path.join(cdnDir, 'access.log'), 'utf8');
    assert.match(log, /POST \/v1\/devices\/box-1\/checkin/);
  } finally {
    if (!process.env.IBU_KEEP_CDN) await promisify(execFile)('bash', [script, 'stop', cdnDir]).catch(() => undefined);
    await close();
    await dev.cleanup();
  }
});
