import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Keyring } from '../../src/release/keyring.js';
import { fetchRelease } from '../../src/release/fetch.js';
import { readChannel } from '../../src/release/channel.js';
import { HttpStore } from '../../src/store/http-store.js';
import { get, publisher, sha256File, start, tmpDir, type Running } from './helpers.js';
import { BACKENDS } from '../fleet/backends.js';

describe('ibu serve: releases, chunks, validation, admin', () => {
  const work = tmpDir('routes');
  const store = path.join(work, 'store');
  let srv: Running;
  let chunkId = '';
  let chunkBytes = Buffer.alloc(0);
  let image2 = '';

  before(async () => {
    const pub = await publisher(store, work);
    await pub.publish('1.0.1');
    image2 = await pub.publish('1.0.2');
    srv = await start({ dataDir: store, adminToken: 'sesame', precompute: 0, fleet: true });
    // The biggest stored chunk of 1.0.2, so ranges have room.
    const m = JSON.parse(await fsp.readFile(path.join(store, 'releases/1.0.2/manifest.json'), 'utf8')) as { chunks: Array<{ id: string; zero?: boolean }> };
    let best = 0;
    for (const c of m.chunks) {
      if (c.zero || c.id === '0'.repeat(64)) continue;
      const b = await fsp.readFile(path.join(store, 'chunks', c.id.slice(0, 4), `${c.id}.zst`));
      if (b.length > best) {
        best = b.length;
        chunkId = c.id;
        chunkBytes = b;
      }
    }
    assert.ok(chunkBytes.length > 100, 'need a chunk with some bytes');
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('lists a channel and serves the signed manifest as stored', async () => {
    const r = await get(`${srv.url}/v1/channels/stable/releases`);
    assert.equal(r.status, 200);
    const body = r.json() as { channel: string; releases: Array<{ version: string; manifestUrl: string }> };
    assert.deepEqual(
      body.releases.map((x) => x.version),
      ['1.0.1', '1.0.2'],
    );
    assert.equal(body.releases[1]!.manifestUrl, '/v1/releases/1.0.2/manifest');

    const m = await get(`${srv.url}${body.releases[1]!.manifestUrl}`);
    assert.equal(m.status, 200);
    assert.deepEqual(m.body, await fsp.readFile(path.join(store, 'releases/1.0.2/manifest.json')));
    assert.match(String(m.headers['content-type']), /application\/json/);
    const again = await get(`${srv.url}/v1/releases/1.0.2/manifest`, { 'if-none-match': String(m.headers.etag) });
    assert.equal(again.status, 304);

    assert.equal((await get(`${srv.url}/v1/channels/nightly/releases`)).status, 404);
    const missing = await get(`${srv.url}/v1/releases/9.9.9/manifest`);
    assert.equal(missing.status, 404);
    assert.equal((missing.json().error as { code: string }).code, 'RELEASE_NOT_FOUND');
  });

  it('lets a device fetch a release through the API with the real fetch code', async () => {
    const store = new HttpStore(`${srv.url}/v1`);
    try {
      const ch = await readChannel(store, 'stable');
      assert.deepEqual(ch.versions, ['1.0.1', '1.0.2']);
      const out = path.join(work, 'fetched.img');
      const r = await fetchRelease({ store, version: '1.0.2', keyring: await Keyring.load(path.join(work, 'keys')), out });
      assert.ok(r.downloadedBytes > 0);
      assert.equal(await sha256File(out), await sha256File(image2));
      await fsp.rm(out, { force: true });
    } finally {
      await store.close();
    }
  });

  it('serves a chunk with immutable caching, a strong ETag and 304', async () => {
    const r = await get(`${srv.url}/v1/chunks/${chunkId}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, chunkBytes);
    assert.equal(r.headers.etag, `"${chunkId}"`);
    assert.match(String(r.headers['cache-control']), /immutable/);
    assert.equal(r.headers['accept-ranges'], 'bytes');
    assert.equal(Number(r.headers['content-length']), chunkBytes.length);

    const h = await get(`${srv.url}/v1/chunks/${chunkId}`, {}, 'HEAD');
    assert.equal(h.status, 200);
    assert.equal(h.body.length, 0);
    assert.equal(Number(h.headers['content-length']), chunkBytes.length);

    assert.equal((await get(`${srv.url}/v1/chunks/${chunkId}`, { 'if-none-match': `"${chunkId}"` })).status, 304);
    assert.equal((await get(`${srv.url}/v1/chunks/${chunkId}`, { 'if-none-match': `W/"x", "${chunkId}"` })).status, 304);
    assert.equal((await get(`${srv.url}/v1/chunks/${'a'.repeat(64)}`)).status, 404);
  });

  it('answers byte ranges correctly', async () => {
    const n = chunkBytes.length;
    const url = `${srv.url}/v1/chunks/${chunkId}`;
    const single = await get(url, { range: 'bytes=10-99' });
    assert.equal(single.status, 206);
    assert.equal(single.headers['content-range'], `bytes 10-99/${n}`);
    assert.deepEqual(single.body, chunkBytes.subarray(10, 100));

    const suffix = await get(url, { range: 'bytes=-50' });
    assert.equal(suffix.status, 206);
    assert.equal(suffix.headers['content-range'], `bytes ${n - 50}-${n - 1}/${n}`);
    assert.deepEqual(suffix.body, chunkBytes.subarray(n - 50));

    const open = await get(url, { range: `bytes=${n - 7}-` });
    assert.equal(open.status, 206);
    assert.deepEqual(open.body, chunkBytes.subarray(n - 7));

    const past = await get(url, { range: 'bytes=5-99999999' });
    assert.equal(past.status, 206);
    assert.equal(past.headers['content-range'], `bytes 5-${n - 1}/${n}`);

    const bad = await get(url, { range: `bytes=${n}-` });
    assert.equal(bad.status, 416);
    assert.equal(bad.headers['content-range'], `bytes */${n}`);

    // If-Range: the range holds while the ETag matches; otherwise the whole body comes back.
    const ok = await get(url, { range: 'bytes=0-9', 'if-range': `"${chunkId}"` });
    assert.equal(ok.status, 206);
    assert.deepEqual(ok.body, chunkBytes.subarray(0, 10));
    const stale = await get(url, { range: 'bytes=0-9', 'if-range': '"something-else"' });
    assert.equal(stale.status, 200);
    assert.deepEqual(stale.body, chunkBytes);

    // Multiple ranges are answered with the whole file (allowed by RFC 9110).
    const multi = await get(url, { range: 'bytes=0-1,5-6' });
    assert.equal(multi.status, 200);
    assert.equal(multi.body.length, n);
  });

  it('rejects path traversal and malformed ids and versions with 400', async () => {
    const cases = [
      '/v1/chunks/..%2f..%2fetc%2fpasswd',
      '/v1/chunks/..%2F..%2F..%2Fserver.sqlite',
      `/v1/chunks/${chunkId.toUpperCase()}`,
      `/v1/chunks/${chunkId.slice(1)}`,
      `/v1/chunks/${chunkId}0`,
      '/v1/chunks/%00',
      '/v1/releases/..%2F/manifest',
      '/v1/releases/..%2F..%2Fserver.sqlite%00/manifest',
      '/v1/releases/1.0.2%2F..%2F1.0.1/manifest',
      '/v1/releases/not-a-version/manifest',
      '/v1/channels/..%2Freleases/releases',
      '/v1/channels/.hidden/releases',
      '/v1/deltas/1.0.1/..%2F1.0.2',
      '/v1/deltas/1.0.1/1.0.1',
    ];
    for (const c of cases) {
      const r = await get(`${srv.url}${c}`);
      assert.equal(r.status, 400, `${c} gave ${r.status}`);
      assert.equal((r.json().error as { code: string }).code, 'BAD_REQUEST', c);
    }
  });

  it('answers 404 for a delta from or to a version that is not published', async () => {
    const r = await get(`${srv.url}/v1/deltas/1.0.0/1.0.2`);
    assert.equal(r.status, 404);
    assert.equal((r.json().error as { code: string }).code, 'RELEASE_NOT_FOUND');
    assert.equal((await get(`${srv.url}/v1/deltas/1.0.1/2.0.0`)).status, 404);
  });

  it('guards admin routes with the bearer token', async () => {
    const none = await get(`${srv.url}/v1/admin/cache`);
    assert.equal(none.status, 401);
    assert.match(String(none.headers['www-authenticate']), /Bearer/);
    // A wrong token is 401 like a missing one (it was 403 before the admin checks became one, #13).
    const wrong = await get(`${srv.url}/v1/admin/cache`, { authorization: 'Bearer wrong' });
    assert.equal(wrong.status, 401);
    assert.match(String(wrong.headers['www-authenticate']), /Bearer/);
    assert.equal((await get(`${srv.url}/v1/admin/cache`, { authorization: 'Basic c2VzYW1l' })).status, 401);
    const ok = await get(`${srv.url}/v1/admin/cache`, { authorization: 'Bearer sesame' });
    assert.equal(ok.status, 200);
    assert.equal(ok.json().usedBytes, 0);
    assert.equal((await get(`${srv.url}/v1/admin/releases/1.0.1`, {}, 'DELETE')).status, 401);
    const auth = { authorization: 'Bearer sesame' };
    assert.equal((await get(`${srv.url}/v1/admin/publish`, auth, 'POST', JSON.stringify({ version: '../x' }))).status, 400);
    assert.equal((await get(`${srv.url}/v1/admin/deltas/1.0.1/1.0.2`, auth, 'DELETE')).status, 404);
    assert.equal((await get(`${srv.url}/v1/admin/releases/..%2F`, auth, 'DELETE')).status, 400);
  });

  it('deletes a release through the admin API: gone from the channel, manifest 404', async () => {
    const auth = { authorization: 'Bearer sesame' };
    const r = await get(`${srv.url}/v1/admin/releases/1.0.1`, auth, 'DELETE');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json().channels, ['stable']);
    const list = (await get(`${srv.url}/v1/channels/stable/releases`)).json() as { releases: Array<{ version: string }> };
    assert.deepEqual(
      list.releases.map((x) => x.version),
      ['1.0.2'],
    );
    assert.equal((await get(`${srv.url}/v1/releases/1.0.1/manifest`)).status, 404);
    assert.equal((await get(`${srv.url}/v1/admin/releases/1.0.1`, auth, 'DELETE')).status, 404);
    // The channel file stays in the release side's format.
    const ch = JSON.parse(await fsp.readFile(path.join(store, 'channels/stable.json'), 'utf8')) as { versions: string[]; latest: string };
    assert.deepEqual(ch.versions, ['1.0.2']);
    assert.equal(ch.latest, '1.0.2');
  });

  it('refuses a second server on the same data directory', async () => {
    await assert.rejects(start({ dataDir: store, precompute: 0 }), { code: 'CONFLICT' });
  });

  it('has a JSON schema on every route', () => {
    const mine = srv.routes.filter((r) => r.method !== 'HEAD');
    assert.ok(mine.length >= 9, `only ${mine.length} routes`);
    // The fleet plugin's routes are among them (the check below covers them too).
    for (const url of ['/v1/devices/enroll', '/v1/devices/:id/checkin', '/v1/admin/fleet/summary', '/v1/admin/fleet/rollouts/:id', '/dashboard', '/metrics']) {
      assert.ok(
        mine.some((r) => r.url === url),
        `fleet route ${url} is registered`,
      );
    }
    for (const r of mine) {
      assert.ok(r.schema?.response, `${String(r.method)} ${r.url} has no response schema`);
      if (r.url.includes(':')) assert.ok(r.schema?.params, `${String(r.method)} ${r.url} has no params schema`);
    }
  });
});

// The fleet routes on each fleet backend: the same admin check, the same error map, a schema on every route.
for (const backend of BACKENDS) {
  describe(`ibu serve with the fleet on ${backend.name}: one admin check, one error map`, { skip: backend.skip }, () => {
    const work = tmpDir('routes-fleet');
    let srv: Running;
    let cleanup: (() => Promise<void>) | undefined;

    before(async () => {
      const made = await backend.make();
      cleanup = made.cleanup;
      if (made.url) await made.repo.close();
      srv = await start({ dataDir: work, adminToken: 'sesame', precompute: 0, fleet: true, databaseUrl: made.url });
    });
    after(async () => {
      await srv?.close();
      await cleanup?.();
      await fsp.rm(work, { recursive: true, force: true });
    });

    it('guards the fleet admin routes with the same check and answers with the same error map', async () => {
      await get(`${srv.url}/v1/admin/fleet/releases`, { authorization: 'Bearer sesame' }, 'POST', JSON.stringify({ version: '1.0.2' }));
      for (const auth of [{}, { authorization: 'Bearer wrong' }, { authorization: 'Basic c2VzYW1l' }] as Array<Record<string, string>>) {
        const r = await get(`${srv.url}/v1/admin/fleet/summary`, auth);
        assert.equal(r.status, 401, JSON.stringify(auth));
        assert.match(String(r.headers['www-authenticate']), /Bearer/);
        assert.equal((r.json().error as { code: string }).code, 'UNAUTHORIZED');
      }
      const auth = { authorization: 'Bearer sesame' };
      assert.equal((await get(`${srv.url}/v1/admin/fleet/summary`, auth)).status, 200);
      const bad = await get(`${srv.url}/v1/admin/fleet/rollouts`, auth, 'POST', JSON.stringify({ version: '1.0.2', spec: { waves: [50, 10] } }));
      assert.equal(bad.status, 400);
      assert.equal((bad.json().error as { code: string }).code, 'ROLLOUT_INVALID');
      const unknown = await get(`${srv.url}/v1/admin/fleet/devices/nobody`, auth);
      assert.equal(unknown.status, 404);
      assert.equal((unknown.json().error as { code: string }).code, 'DEVICE_UNKNOWN');
    });

    it('has a response schema on every fleet route', () => {
      const fleet = srv.routes.filter((r) => r.method !== 'HEAD' && /^\/(v1\/devices|v1\/admin\/fleet|dashboard|metrics)/.test(r.url));
      assert.ok(fleet.length >= 20, `only ${fleet.length} fleet routes`);
      for (const r of fleet) {
        assert.ok(r.schema?.response, `${String(r.method)} ${r.url} has no response schema`);
        if (r.url.includes(':')) assert.ok(r.schema?.params, `${String(r.method)} ${r.url} has no params schema`);
      }
    });
  });
}
