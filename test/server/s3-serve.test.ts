// test-needs: root (scripts/radosgw.sh runs Ceph daemons)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { applyDelta } from '../../src/delta/index.js';
import { publishRelease } from '../../src/release/publish.js';
import { generateKeys } from '../../src/release/keys.js';
import { S3Store } from '../../src/store/s3-store.js';
import { chunkPath } from '../../src/store/layout.js';
import type { Manifest } from '../../src/release/types.js';
import { dropBucket, newBucket, noS3, radosgw, type Radosgw } from '../helpers/radosgw.js';
import { get, makeImage, releaseTree, sha256File, start, tmpDir, waitFor, type Running } from './helpers.js';

// `ibu serve --data DIR --store s3://bucket/prefix`: the release side read from a real S3 server
// (radosgw, scripts/radosgw.sh); the data directory keeps only the server's own state.
describe('ibu serve with releases on S3 (radosgw)', () => {
  const work = tmpDir('s3serve');
  const data = path.join(work, 'data');
  const images: Record<string, string> = {};
  let gw: Radosgw | string;
  let bucket = '';
  let srv: Running | undefined;
  let m2: Manifest;

  before(async () => {
    gw = await radosgw();
    if (typeof gw === 'string') return;
    bucket = await newBucket(gw, 'serve');
    const keys = await generateKeys(path.join(work, 'keys'));
    const store = new S3Store(`s3://${bucket}/rel`, gw.options);
    try {
      for (const v of ['1.0.1', '1.0.2']) {
        images[v] = await makeImage(work, `img-${v}`, releaseTree(Number(v.split('.').pop())));
        await publishRelease({ image: images[v]!, version: v, store, keyFiles: [keys.privateKeyPath], requireKernel: false });
      }
      m2 = JSON.parse(Buffer.from(await store.getFile('releases/1.0.2/manifest.json')).toString()) as Manifest;
    } finally {
      await store.close();
    }
    await fsp.mkdir(data, { recursive: true });
    srv = await start({ dataDir: data, store: `s3://${bucket}/rel`, s3: gw.options, precompute: 0, retryAfterSeconds: 1 });
  });
  after(async () => {
    await srv?.close();
    if (typeof gw === 'object' && bucket) await dropBucket(gw, bucket);
    await fsp.rm(work, { recursive: true, force: true });
  });
  const it2 = (name: string, fn: (s: Running) => Promise<void>) =>
    it(name, async (t) => {
      if (typeof gw === 'string') return noS3(t, gw);
      await fn(srv!);
    });

  it2('channels and manifests come from the bucket, with validators (304) and nothing copied to --data', async (s) => {
    const ch = await get(`${s.url}/v1/channels/stable/releases`);
    assert.equal(ch.status, 200);
    assert.deepEqual(ch.json().versions, ['1.0.1', '1.0.2']);
    const m = await get(`${s.url}/v1/releases/1.0.2/manifest`);
    assert.equal(m.status, 200);
    assert.equal((m.json() as unknown as Manifest).image.sha256, m2.image.sha256);
    const etag = String(m.headers.etag);
    assert.match(etag, /^"m-/);
    assert.equal((await get(`${s.url}/v1/releases/1.0.2/manifest`, { 'if-none-match': etag })).status, 304);
    assert.equal((await get(`${s.url}/v1/releases/9.9.9/manifest`)).status, 404);
    assert.equal(existsSync(path.join(data, 'chunks')), false);
    assert.equal(existsSync(path.join(data, 'releases')), false);
  });

  it2('chunks: whole, HEAD, ranges (206, 416) and 404, as from a directory', async (s) => {
    const c = m2.chunks.find((x) => !x.zero)!;
    const url = `${s.url}/v1/chunks/${c.id}`;
    const whole = await get(url);
    assert.equal(whole.status, 200);
    assert.equal(whole.headers['cache-control'], 'public, max-age=31536000, immutable');
    assert.equal(whole.headers.etag, `"${c.id}"`);
    const head = await get(url, {}, 'HEAD');
    assert.equal(Number(head.headers['content-length']), whole.body.length);
    const part = await get(url, { range: 'bytes=10-19' });
    assert.equal(part.status, 206);
    assert.equal(part.headers['content-range'], `bytes 10-19/${whole.body.length}`);
    assert.deepEqual(part.body, whole.body.subarray(10, 20));
    assert.equal((await get(url, { range: `bytes=${whole.body.length}-` })).status, 416);
    assert.equal((await get(`${s.url}/v1/chunks/${'e'.repeat(64)}`)).status, 404);
    assert.ok(chunkPath(c.id).startsWith('chunks/'));
  });

  it2('a delta is built from the bucket (images rebuilt from S3 chunks in the build child): 202, then 200, and it applies', async (s) => {
    const url = `${s.url}/v1/deltas/1.0.1/1.0.2`;
    const first = await get(url);
    assert.equal(first.status, 202);
    const done = await waitFor(
      'the delta',
      async () => {
        const r = await get(url);
        return r.status === 200 ? r : undefined;
      },
      180_000,
      500,
    );
    const delta = path.join(work, 'd.ibudelta');
    await fsp.writeFile(delta, done.body);
    const out = path.join(work, 'applied.img');
    await applyDelta({ sourceImage: images['1.0.1']!, delta, out });
    assert.equal(await sha256File(out), await sha256File(images['1.0.2']!));
  });
});
