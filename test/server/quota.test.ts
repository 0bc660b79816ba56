import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { request } from 'undici';
import { runChild, type DeltaBuilder } from '../../src/server/delta-builder.js';
import { agent, get, publisher, start, tmpDir, waitFor, type Running } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 24 * MiB; // bigger than loopback socket buffers, so an unread response stays open

/** Writes SIZE random bytes with a real command, standing in for makeDelta (sizes under control). */
const sized: DeltaBuilder = async ({ out, signal }) => {
  await runChild('sh', ['-c', `head -c ${SIZE} /dev/urandom > "$1"`, 'sh', out], { signal });
};

describe('delta cache quota: LRU eviction, never a delta being streamed', () => {
  const work = tmpDir('quota');
  const store = path.join(work, 'store');
  let srv: Running;

  before(async () => {
    const pub = await publisher(store, work);
    for (const v of ['1.0.1', '1.0.2', '1.0.3', '1.0.4']) await pub.publish(v);
    srv = await start({ dataDir: store, precompute: 0, builder: sized, deltaQuotaBytes: 2.5 * SIZE });
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  const state = async (from: string, to: string): Promise<string> => (await srv.ctx.deltas.jobs.get(from, to))?.state ?? 'none';
  async function build(from: string, to: string): Promise<void> {
    assert.equal((await get(`${srv.url}/v1/deltas/${from}/${to}`)).status, 202);
    await waitFor(`${from}->${to} ready`, async () => ((await state(from, to)) === 'ready' ? true : undefined), 90_000);
  }
  const exists = (from: string, to: string) =>
    fsp.access(path.join(store, 'cache/deltas', `${from}_${to}.ibudelta`)).then(
      () => true,
      () => false,
    );

  it('evicts the least recently served delta when the quota is exceeded', async () => {
    await build('1.0.1', '1.0.2'); // A
    await new Promise((r) => setTimeout(r, 5));
    await build('1.0.1', '1.0.3'); // B
    await new Promise((r) => setTimeout(r, 5));
    // Serving A makes B the least recently used.
    assert.equal((await get(`${srv.url}/v1/deltas/1.0.1/1.0.2`)).status, 200);
    await new Promise((r) => setTimeout(r, 5));
    await build('1.0.2', '1.0.3'); // C: 3 x SIZE > 2.5 x SIZE
    await waitFor('eviction', async () => ((await state('1.0.1', '1.0.3')) === 'none' ? true : undefined), 30_000);
    assert.equal(await state('1.0.1', '1.0.2'), 'ready');
    assert.equal(await state('1.0.2', '1.0.3'), 'ready');
    // The row goes first (a request then queues a rebuild), the file right after it.
    await waitFor('file removed', async () => ((await exists('1.0.1', '1.0.3')) ? undefined : true), 10_000);
    assert.ok((await srv.ctx.deltas.cache.usedBytes()) <= 2.5 * SIZE);
    const stats = (await get(`${srv.url}/v1/admin/cache`, { authorization: 'Bearer x' })).status;
    assert.equal(stats, 403, 'no admin token configured: admin routes refuse');
  });

  it('does not evict a delta while a response is streaming it', async () => {
    // Start downloading A and read only its first bytes: the response stays open (pinned).
    const res = await request(`${srv.url}/v1/deltas/1.0.1/1.0.2`, { dispatcher: agent });
    assert.equal(res.statusCode, 200);
    const etag = String(res.headers.etag);
    const it = res.body[Symbol.asyncIterator]();
    const first = await it.next();
    assert.ok(!first.done);
    await waitFor('pin', () => (srv.ctx.deltas.cache.pinned('1.0.1', '1.0.2') > 0 ? true : undefined));
    // Serve C so that A (pinned) is now the least recently used.
    await new Promise((r) => setTimeout(r, 5));
    assert.equal((await get(`${srv.url}/v1/deltas/1.0.2/1.0.3`)).status, 200);
    await build('1.0.3', '1.0.4'); // D: over quota again
    await waitFor('eviction of C', async () => ((await state('1.0.2', '1.0.3')) === 'none' ? true : undefined), 30_000);
    assert.equal(await state('1.0.1', '1.0.2'), 'ready', 'the delta being streamed stays');
    assert.equal(await exists('1.0.1', '1.0.2'), true);
    // The download completes intact.
    const parts: Buffer[] = [Buffer.from(first.value as Uint8Array)];
    for (let n = await it.next(); !n.done; n = await it.next()) parts.push(Buffer.from(n.value as Uint8Array));
    const body = Buffer.concat(parts);
    assert.equal(body.length, SIZE);
    const again = await get(`${srv.url}/v1/deltas/1.0.1/1.0.2`);
    assert.equal(String(again.headers.etag), etag);
    assert.ok(again.body.equals(body));
    await waitFor('unpinned', () => (srv.ctx.deltas.cache.pinned('1.0.1', '1.0.2') === 0 ? true : undefined));
  });

  it('resumes a delta download with Range and If-Range', async () => {
    const url = `${srv.url}/v1/deltas/1.0.3/1.0.4`;
    const full = await get(url);
    assert.equal(full.status, 200);
    const etag = String(full.headers.etag);
    assert.match(etag, /^"[0-9a-f]{64}"$/);
    const tail = await get(url, { range: `bytes=${SIZE - 1000}-`, 'if-range': etag });
    assert.equal(tail.status, 206);
    assert.ok(tail.body.equals(full.body.subarray(SIZE - 1000)));
    const changed = await get(url, { range: 'bytes=0-9', 'if-range': '"0000"' });
    assert.equal(changed.status, 200);
    assert.equal(changed.body.length, SIZE);
    assert.equal((await get(url, { range: `bytes=${SIZE}-` })).status, 416);
    // HEAD answers from the database (no file opened) with the same headers as GET.
    const h = await get(url, { range: 'bytes=-100', 'if-range': etag }, 'HEAD');
    assert.equal(h.status, 206);
    assert.equal(h.headers['content-range'], `bytes ${SIZE - 100}-${SIZE - 1}/${SIZE}`);
    assert.equal(h.headers['content-length'], '100');
    assert.equal(h.headers.etag, etag);
    const hf = await get(url, {}, 'HEAD');
    assert.equal(hf.status, 200);
    assert.equal(Number(hf.headers['content-length']), SIZE);
    assert.equal((await get(url, { 'if-none-match': etag }, 'HEAD')).status, 304);
  });
});
