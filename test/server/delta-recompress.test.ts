/**
 * Server-built deltas with RECOMPRESS ops (issue #20, src/server/recompress-deltas.ts): a device
 * that names its encoders gets a delta whose changed xz/gzip files travel uncompressed, built by
 * the real builder (images from the store's chunks, makeDelta in a child process) with only the
 * codecs whose versions match; a device naming none, or other versions, gets the plain delta of
 * the pair. Real xz and gzip streams, real mke2fs images, real HTTP on loopback, real apply.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { applyDelta, readDelta } from '../../src/delta/index.js';
import { commonEncoders, formatEncoders, parseEncoders } from '../../src/delta/encoder-set.js';
import { localEncoders } from '../../src/delta/recompressor.js';
import { parseDeltaJob, recompressJobFrom } from '../../src/server/recompress-deltas.js';
import { get, publisher, sha256File, start, tmpDir, waitFor, type Running } from './helpers.js';
import { binaryish, mutate } from '../delta/fixture.js';

const xz = (data: Buffer): Buffer => execFileSync('xz', ['-T2', '--check=crc32', '--lzma2=dict=1MiB', '-c'], { input: data, maxBuffer: 1 << 28 });
const gzip = (data: Buffer): Buffer => execFileSync('gzip', ['-9n', '-c'], { input: data, maxBuffer: 1 << 28 });

function tree(n: 1 | 2): Record<string, Buffer | string> {
  const files: Record<string, Buffer | string> = {};
  for (let i = 0; i < 6; i++) {
    const m = binaryish(300 + i, 60_000 + i * 7_000);
    files[`usr/lib/modules/6.12.11${6 + n}/kernel/m${i}.ko.xz`] = xz(n === 1 ? m : mutate(m, 40 + i, 3, 16));
  }
  const doc = Buffer.from(Array.from(binaryish(9, 20_000), (b) => `word${b % 89} `).join(''));
  files['usr/share/doc/app/changelog.gz'] = gzip(n === 1 ? doc : Buffer.concat([Buffer.from('app (2) unstable; urgency=low\n'), doc]));
  files['etc/os-release'] = `VERSION_ID=${n}\n`;
  return files;
}

describe('encoder sets: what a device can re-encode with', () => {
  it('formats, parses and intersects; unknown codecs and odd versions are ignored', () => {
    assert.equal(formatEncoders({ zstd: '1.5.7', xz: '5.4.1' }), 'xz-5.4.1~zstd-1.5.7');
    assert.deepEqual(parseEncoders('xz-5.8.1~brotli-1.1~gzip-1.13~zstd-x;rm~zstd'), { xz: '5.8.1', gzip: '1.13' });
    assert.deepEqual(commonEncoders({ xz: '5.8.1', gzip: '1.12', zstd: '1.5.7' }, { xz: '5.4.1', gzip: '1.12', zstd: '1.5.7' }), {
      gzip: '1.12',
      zstd: '1.5.7',
    });
    assert.equal(recompressJobFrom('1.0', {}), '1.0', 'nothing in common: the plain job');
    const key = recompressJobFrom('1.0-rc.1', { xz: '5.4.1', gzip: '1.12' });
    assert.equal(key, 'rc~xz-5.4.1~gzip-1.12+1.0-rc.1');
    assert.deepEqual(parseDeltaJob(key), { from: '1.0-rc.1', encoders: { xz: '5.4.1', gzip: '1.12' } });
    assert.deepEqual(parseDeltaJob('1.0'), { from: '1.0', encoders: null });
  });
});

describe('ibu serve: deltas with RECOMPRESS ops for devices that name their encoders', () => {
  const work = tmpDir('recompress');
  const store = path.join(work, 'store');
  const images: Record<string, string> = {};
  let srv: Running;
  const mine = formatEncoders(localEncoders());

  before(async () => {
    const pub = await publisher(store, work);
    images['1.0.1'] = await pub.publish('1.0.1', tree(1));
    images['1.0.2'] = await pub.publish('1.0.2', tree(2));
    srv = await start({ dataDir: store, precompute: 0, retryAfterSeconds: 1, adminToken: 'admin' });
  });
  after(async () => {
    await srv?.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  async function fetchDelta(query: string, name: string): Promise<string> {
    const url = `${srv.url}/v1/deltas/1.0.1/1.0.2${query}`;
    const r = await waitFor(`delta ${query}`, async () => {
      const x = await get(url);
      // 'no-store': the plain delta, served while the asked one builds.
      return x.status === 200 && x.headers['cache-control'] !== 'no-store' ? x : undefined;
    });
    const file = path.join(work, name);
    await fsp.writeFile(file, r.body);
    return file;
  }

  async function applied(delta: string): Promise<string> {
    const out = `${delta}.img`;
    await applyDelta({ sourceImage: images['1.0.1']!, delta, out });
    return sha256File(out);
  }

  it('the server has encoders to offer (xz and gzip installed here, zstd bundled)', () => {
    assert.deepEqual(Object.keys(parseEncoders(mine)).sort(), ['gzip', 'xz', 'zstd']);
  });

  it('a device with the same encoders gets RECOMPRESS ops (after a 202 while nothing is built); one without gets the plain delta; both rebuild the target', async () => {
    const asked = await get(`${srv.url}/v1/deltas/1.0.1/1.0.2?encoders=${encodeURIComponent(mine)}`);
    assert.equal(asked.status, 202, 'nothing built yet: come back later');
    const rc = await fetchDelta(`?encoders=${encodeURIComponent(mine)}`, 'rc.ibudelta');
    const plain = await fetchDelta('', 'plain.ibudelta');
    const dr = await readDelta(rc);
    const dp = await readDelta(plain);
    assert.equal(dr.header.format, 2);
    assert.deepEqual(Object.keys(dr.header.encoders ?? {}).sort(), ['gzip', 'xz']);
    assert.ok(dr.ops.filter((o) => o.type === 'recompress').length >= 7, 'six modules and the changelog');
    assert.equal(dp.header.format, 1);
    assert.equal(dp.ops.filter((o) => o.type === 'recompress').length, 0);
    assert.ok((await fsp.stat(rc)).size < (await fsp.stat(plain)).size / 2, 'the recompressing delta is much smaller');
    const want = await sha256File(images['1.0.2']!);
    assert.equal(await applied(rc), want);
    assert.equal(await applied(plain), want);
    const keys = (await srv.ctx.deltas.jobs.all()).map((j) => j.from).sort();
    assert.deepEqual(keys, ['1.0.1', `rc~${mine}+1.0.1`]);
  });

  it('only the codecs whose versions match are recompressed; other versions get the plain delta, built once', async () => {
    const xzOnly = formatEncoders({ xz: localEncoders().xz, gzip: '0.1' });
    // While its own delta builds, the device gets the plain one at once, marked for no cache to keep.
    const now = await get(`${srv.url}/v1/deltas/1.0.1/1.0.2?encoders=${encodeURIComponent(xzOnly)}`);
    assert.equal(now.status, 200);
    assert.equal(now.headers['cache-control'], 'no-store');
    assert.deepEqual(now.body, await fsp.readFile(path.join(work, 'plain.ibudelta')));
    const d = await readDelta(await fetchDelta(`?encoders=${encodeURIComponent(xzOnly)}`, 'xz-only.ibudelta'));
    assert.deepEqual(Object.keys(d.header.encoders ?? {}), ['xz']);
    const changelog = d.ops.find((o) => 'path' in o && o.path === '/usr/share/doc/app/changelog.gz');
    assert.equal(changelog?.type, 'patch', 'the gzip file is patched as bytes: the device has another gzip');
    const before = (await srv.ctx.deltas.jobs.all()).length;
    await fetchDelta('?encoders=xz-0.0.1~gzip-0.1', 'none-common.ibudelta');
    assert.equal((await srv.ctx.deltas.jobs.all()).length, before, 'no encoder in common: the plain job, already built');
  });

  it('deleting a release removes its recompressing deltas too', async () => {
    const jobs = await srv.ctx.deltas.jobs.involving('1.0.1');
    assert.deepEqual(jobs.map((j) => j.from).sort(), ['1.0.1', `rc~${formatEncoders({ xz: localEncoders().xz })}+1.0.1`, `rc~${mine}+1.0.1`].sort());
    const files = jobs.map((j) => srv.ctx.layout.delta(j.from, j.to));
    const r = await get(`${srv.url}/v1/admin/releases/1.0.1`, { authorization: 'Bearer admin' }, 'DELETE');
    assert.equal(r.status, 200, r.body.toString());
    assert.equal(r.json().deltasRemoved, 3);
    assert.deepEqual(await srv.ctx.deltas.jobs.involving('1.0.1'), []);
    for (const f of files) await assert.rejects(fsp.access(f), `${f} removed`);
  });
});
