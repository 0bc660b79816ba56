import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { applyDelta, makeDelta, readDelta, readDeltaHeader } from '../../src/delta/index.js';
import { encodeHead, trailer } from '../../src/delta/frame-codec.js';
import { isIbuError, type ErrorCode } from '../../src/errors.js';
import type { Manifest } from '../../src/release/types.js';
import { binaryish, imageJson, makeImage, mutate, tempDir, writeTree } from './fixture.js';

// Bad deltas and wrong images: each gets its stable error code, and OUT is never replaced.

const OLD_OUT = 'an image that must survive\n';

describe('delta bad input', () => {
  const tmp = tempDir();
  const p = (n: string) => path.join(tmp.dir, n);
  const A = p('a.img');
  const B = p('b.img');
  const C = p('c.img');
  const AB = p('ab.ibudelta');
  const BC = p('bc.ibudelta');
  const OUT = p('out.img');

  before(async () => {
    const base = binaryish(1, 400_000);
    writeTree(p('ta'), { 'etc/ibu/image.json': imageJson('1.0'), 'usr/bin/app': base, 'usr/share/a': binaryish(2, 90_000) });
    writeTree(p('tb'), {
      'etc/ibu/image.json': imageJson('1.1'),
      'usr/bin/app': mutate(base, 3),
      'usr/share/a': binaryish(2, 90_000),
      'usr/share/b': binaryish(4, 20_000),
    });
    writeTree(p('tc'), { 'etc/ibu/image.json': imageJson('1.2'), 'usr/bin/app': mutate(base, 5), 'usr/share/c': binaryish(6, 20_000) });
    await makeImage(p('ta'), A, { size: '16M' });
    await makeImage(p('tb'), B, { size: '16M' });
    await makeImage(p('tc'), C, { size: '16M' });
    await makeDelta({ fromImage: A, toImage: B, out: AB, jobs: 1 });
    await makeDelta({ fromImage: B, toImage: C, out: BC, jobs: 1 });
  });
  after(() => tmp.cleanup());

  async function expectCode(code: ErrorCode, opts: Partial<Parameters<typeof applyDelta>[0]>, why: string) {
    fs.writeFileSync(OUT, OLD_OUT);
    await assert.rejects(applyDelta({ sourceImage: A, delta: AB, out: OUT, ...opts }), (err: unknown) => {
      assert.ok(isIbuError(err), `${why}: not an IbuError: ${String(err)}`);
      assert.equal(err.code, code, `${why}: ${err.message}`);
      return true;
    });
    assert.equal(fs.readFileSync(OUT, 'utf8'), OLD_OUT, `${why}: OUT was replaced`);
    assert.equal(fs.existsSync(`${OUT}.partial`), false, `${why}: a .partial was left behind`);
  }

  it('rejects a corrupt delta wherever the damage is (DELTA_INVALID)', async () => {
    const good = fs.readFileSync(AB);
    const jsonLen = good.readUInt32LE(12);
    const places = {
      magic: 1,
      'fixed header': 20,
      'header JSON': 64 + Math.floor(jsonLen / 2),
      'op table': 64 + jsonLen + 3,
      payload: good.length - 40 - 200,
      trailer: good.length - 1,
    };
    for (const [where, at] of Object.entries(places)) {
      const bad = Buffer.from(good);
      bad[at] = bad[at]! ^ 0x5a;
      const file = p(`corrupt-${where.replace(/ /g, '-')}.ibudelta`);
      fs.writeFileSync(file, bad);
      await expectCode('DELTA_INVALID', { delta: file }, `flip in ${where}`);
    }
    const extra = p('extra.ibudelta');
    fs.writeFileSync(extra, Buffer.concat([good, Buffer.from('junk')]));
    await expectCode('DELTA_INVALID', { delta: extra }, 'bytes appended');
    const notDelta = p('not-a-delta');
    fs.writeFileSync(notDelta, 'hello world, not a delta at all, but long enough to have a header of 64 bytes........');
    await expectCode('DELTA_INVALID', { delta: notDelta }, 'not a delta');
  });

  it('rejects a truncated delta at any length (DELTA_TRUNCATED)', async () => {
    const good = fs.readFileSync(AB);
    for (const len of [0, 5, 30, 64 + 3, Math.floor(good.length / 2), good.length - 41, good.length - 1]) {
      const file = p(`trunc-${len}.ibudelta`);
      fs.writeFileSync(file, good.subarray(0, len));
      await expectCode('DELTA_TRUNCATED', { delta: file }, `cut at ${len} of ${good.length}`);
      if (len >= 64 + 3)
        assert.throws(
          () => readDeltaHeader(file),
          (e: unknown) => isIbuError(e, 'DELTA_TRUNCATED'),
        );
    }
  });

  it('rejects the wrong source image (DELTA_WRONG_SOURCE)', async () => {
    await expectCode('DELTA_WRONG_SOURCE', { sourceImage: C }, 'another version');
    await expectCode('DELTA_WRONG_SOURCE', { sourceImage: B, delta: AB }, 'the target as source');
    // Same version string, another build (other content and file set, so its metadata differs
    // too): caught by the sampled source hashes. A source that differs in only a few sampled
    // ranges counts as modified instead (DELTA_SOURCE_MODIFIED, test/delta/modified-source).
    const imposter = p('imposter.img');
    writeTree(p('ti'), {
      'etc/ibu/image.json': imageJson('1.0'),
      'usr/bin/app': binaryish(9, 400_000),
      'usr/share/a': binaryish(10, 90_000),
      'usr/share/z': binaryish(11, 300_000),
      'var/lib/x/y': binaryish(12, 50_000),
    });
    await makeImage(p('ti'), imposter, { size: '16M' });
    await expectCode('DELTA_WRONG_SOURCE', { sourceImage: imposter }, 'same version, other bytes');
    const small = p('small.img');
    fs.writeFileSync(small, fs.readFileSync(A).subarray(0, 8 << 20));
    await expectCode('DELTA_WRONG_SOURCE', { sourceImage: small }, 'shorter image');
    // --verify-source hashes everything: one changed byte is enough.
    const touched = p('touched.img');
    const bytes = fs.readFileSync(A);
    bytes[bytes.length - 100] = 1;
    fs.writeFileSync(touched, bytes);
    await expectCode('DELTA_WRONG_SOURCE', { sourceImage: touched, verifySource: true }, 'verify-source');
  });

  it('rejects a delta for another pair (DELTA_WRONG_PAIR) and applies it to the right one', async () => {
    await expectCode('DELTA_WRONG_PAIR', { expectToVersion: '1.2' }, 'wrong target version');
    await expectCode('DELTA_WRONG_PAIR', { expectFromVersion: '0.9' }, 'wrong source version');
    const h = readDeltaHeader(BC);
    const manifestC = { version: '1.2', image: { size: h.target.size, sha256: h.target.sha256, blockSize: 4096 } } as unknown as Manifest;
    await expectCode('DELTA_WRONG_PAIR', { manifest: manifestC }, 'manifest of another release');
    // The B→C delta given to A: A is not its source.
    await expectCode('DELTA_WRONG_SOURCE', { delta: BC }, 'delta B→C on A');
    const r = await applyDelta({ sourceImage: B, delta: BC, out: p('c2.img'), manifest: manifestC, expectToVersion: '1.2' });
    assert.equal(r.sha256, h.target.sha256);
    assert.ok(fs.readFileSync(p('c2.img')).equals(fs.readFileSync(C)));
  });

  it('refuses a result whose hash differs from the header (IMAGE_HASH_MISMATCH), keeping OUT', async () => {
    // Re-encode a well-formed delta whose header names another target hash.
    const d = readDelta(AB);
    const header = { ...d.header, target: { ...d.header.target, sha256: 'f'.repeat(64) } };
    const payload = fs.readFileSync(AB).subarray(d.payloadOffset, d.payloadOffset + d.payloadLength);
    const layout = encodeHead(header, d.ops, d.segments, payload.length);
    const body = Buffer.concat([layout.head, payload]);
    const forged = p('forged.ibudelta');
    fs.writeFileSync(forged, Buffer.concat([body, trailer(createHash('sha256').update(body).digest())]));
    await expectCode('IMAGE_HASH_MISMATCH', { delta: forged }, 'wrong target hash');
  });

  it('names a missing source or delta (NOT_FOUND)', async () => {
    await expectCode('NOT_FOUND', { delta: p('nope.ibudelta') }, 'missing delta');
    await expectCode('NOT_FOUND', { sourceImage: p('nope.img') }, 'missing source');
  });
});
