import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { applyDelta, makeDelta, readDelta, type DeltaOp } from '../../src/delta/index.js';
import { isIbuError } from '../../src/errors.js';
import { generateKeys } from '../../src/release/keys.js';
import { publishRelease } from '../../src/release/publish.js';
import type { Manifest } from '../../src/release/types.js';
import { LocalStore } from '../../src/store/local-store.js';
import { binaryish, imageJson, makeImage, mutate, tempDir, writeTree } from './fixture.js';

// A device's running image is read-write: some source blocks differ from the release. Apply
// must name exactly the ops that read them, and with a fallback store (a real LocalStore filled
// by `publishRelease`) fetch those target ranges as chunks and still produce B.

function readsAt(op: DeltaOp, at: number): boolean {
  if (op.type === 'copy') return at >= op.src && at < op.src + op.length;
  if (op.type === 'patch') return op.src.some((r) => at >= r.offset && at < r.offset + r.length);
  return false;
}

describe('delta apply on a modified source', () => {
  const tmp = tempDir();
  const p = (n: string) => path.join(tmp.dir, n);
  const A = p('a.img');
  const B = p('b.img');
  const AB = p('ab.ibudelta');
  let manifest: Manifest;
  let store: LocalStore;

  before(async () => {
    const app = binaryish(1, 500_000);
    const lib = binaryish(2, 300_000);
    writeTree(p('ta'), { 'etc/ibu/image.json': imageJson('1.0'), 'usr/bin/app': app, 'usr/lib/lib.so': lib, 'usr/share/data': binaryish(3, 2_000_000) });
    writeTree(p('tb'), {
      'etc/ibu/image.json': imageJson('1.1'),
      'usr/bin/app': mutate(app, 4, 3),
      'usr/lib/lib.so': lib,
      'usr/share/data': binaryish(3, 2_000_000),
    });
    await makeImage(p('ta'), A, { size: '16M' });
    await makeImage(p('tb'), B, { size: '16M' });
    await makeDelta({ fromImage: A, toImage: B, out: AB, jobs: 1 });
    const keys = await generateKeys(p('keys'));
    store = new LocalStore(p('store'));
    await publishRelease({ image: B, version: '1.1', store, keyFiles: [keys.privateKeyPath], requireKernel: false });
    manifest = JSON.parse(fs.readFileSync(p('store/releases/1.1/manifest.json'), 'utf8')) as Manifest;
  });
  after(() => tmp.cleanup());

  it('names exactly the ops whose source bytes changed, then fetches them from the store', async () => {
    const d = readDelta(AB);
    // Three places a running system would touch: the superblock (mount count/time), a block
    // of an unchanged file (COPY), and the middle of the old version of the patched file.
    const copyOfData = d.ops.findIndex((o) => o.type === 'copy' && o.length >= 8192 && o.src > 65536);
    const patch = d.ops.findIndex((o) => o.type === 'patch' && o.path === '/usr/bin/app');
    assert.ok(copyOfData >= 0 && patch >= 0);
    const c = d.ops[copyOfData] as Extract<DeltaOp, { type: 'copy' }>;
    const pa = d.ops[patch] as Extract<DeltaOp, { type: 'patch' }>;
    const spots = [1024 + 52, c.src + 4100, pa.src[0]!.offset + Math.floor(pa.src[0]!.length / 2)];
    const expected = [...new Set(spots.map((at) => d.ops.findIndex((o) => readsAt(o, at))))].sort((x, y) => x - y);
    assert.equal(expected.length, 3);

    const modified = p('running.img');
    const bytes = fs.readFileSync(A);
    for (const at of spots) bytes[at] = bytes[at]! ^ 0xff;
    fs.writeFileSync(modified, bytes);

    const out = p('b-out.img');
    fs.writeFileSync(out, 'old\n');
    await assert.rejects(applyDelta({ sourceImage: modified, delta: AB, out }), (err: unknown) => {
      assert.ok(isIbuError(err, 'DELTA_SOURCE_MODIFIED'), String(err));
      const failed = (err.details!.failedOps as Array<{ index: number; reason: string }>).map((f) => f.index).sort((x, y) => x - y);
      assert.deepEqual(failed, expected);
      assert.match(err.message, /\/usr\/bin\/app/);
      assert.match(err.message, new RegExp(`op ${copyOfData} COPY`));
      return true;
    });
    assert.equal(fs.readFileSync(out, 'utf8'), 'old\n', 'OUT is untouched');
    assert.equal(fs.existsSync(`${out}.partial`), false);

    const r = await applyDelta({ sourceImage: modified, delta: AB, out, manifest, fallbackStore: store });
    assert.deepEqual(
      r.failedOps.map((f) => f.index).sort((x, y) => x - y),
      expected,
    );
    assert.equal(r.fallback.ops, 3);
    assert.ok(r.fallback.chunks >= 3 && r.fallback.downloadedBytes > 0);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(B)), 'B rebuilt with chunks for the modified ranges');
    assert.equal(r.sha256, manifest.image.sha256);
  });

  it('fails cleanly when the fallback store lacks a chunk (CHUNK_MISSING), keeping OUT', async () => {
    const modified = p('running2.img');
    const bytes = fs.readFileSync(A);
    bytes[1024 + 52] = bytes[1024 + 52]! ^ 0xff;
    fs.writeFileSync(modified, bytes);
    const empty = new LocalStore(p('empty-store'));
    const out = p('b-out2.img');
    fs.writeFileSync(out, 'old\n');
    await assert.rejects(applyDelta({ sourceImage: modified, delta: AB, out, manifest, fallbackStore: empty }), (e: unknown) => isIbuError(e, 'CHUNK_MISSING'));
    assert.equal(fs.readFileSync(out, 'utf8'), 'old\n');
    assert.equal(fs.existsSync(`${out}.partial`), false);
  });
});
