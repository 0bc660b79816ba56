import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeDelta, readDelta } from '../../src/delta/index.js';
import { describeDelta, payloadShares, topLevelDirectory, isMetadataPath } from '../../src/delta/info.js';
import { runIbu } from '../helpers/cli.js';
import { binaryish, imageJson, makeImage, mutate, tempDir, writeTree } from './fixture.js';

// `ibu delta info`: where a real delta's bytes go.

describe('delta info', () => {
  it('names the top-level directory and tells metadata from files', () => {
    const table: Array<[string, string, boolean]> = [
      ['/usr/bin/app', '/usr', false],
      ['/boot/vmlinuz-6.1', '/boot', false],
      ['/vmlinuz', '/', false],
      ['/usr/lib/', '/usr', true],
      ['', '/', true],
    ];
    for (const [p, dir, meta] of table) {
      assert.equal(topLevelDirectory(p), dir, p);
      assert.equal(isMetadataPath(p), meta, p);
    }
  });

  it('shares a segment between its ops by the bytes they write, adding up exactly', () => {
    const replace = (offset: number, length: number) => ({
      type: 'replace' as const,
      segment: 0,
      dst: [{ offset, length }],
      dstHash: Buffer.alloc(16),
      path: '/a',
    });
    const ops = [replace(0, 1000), { type: 'zero' as const, dst: 1000, length: 10 }, replace(1010, 2000), replace(3010, 1)];
    const shares = payloadShares({ ops, segments: [{ offset: 0, compressedLength: 101, outputLength: 3001, dictLength: 4 }] });
    assert.deepEqual(shares, [34, 0, 67, 0]);
  });

  describe('on a real delta', () => {
    const tmp = tempDir();
    const p = (n: string) => path.join(tmp.dir, n);
    const app = binaryish(1, 300_000);
    const kernel = binaryish(2, 500_000);

    before(async () => {
      writeTree(p('ta'), { 'etc/ibu/image.json': imageJson('1'), 'usr/bin/app': app, 'boot/vmlinuz': kernel, 'usr/share/same': binaryish(3, 100_000) });
      writeTree(p('tb'), {
        'etc/ibu/image.json': imageJson('2'),
        'usr/bin/app': mutate(app, 4),
        'boot/vmlinuz': mutate(kernel, 5, 8),
        'usr/share/same': binaryish(3, 100_000),
        'usr/lib/new.so': binaryish(6, 40_000),
        'opt/x/y': binaryish(7, 30_000),
      });
      await makeImage(p('ta'), p('a.img'), { size: '8M' });
      await makeImage(p('tb'), p('b.img'), { size: '8M' });
      await makeDelta({ fromImage: p('a.img'), toImage: p('b.img'), out: p('ab.ibudelta'), jobs: 1 });
    });
    after(() => tmp.cleanup());

    it('accounts for every payload byte by kind, by directory and as metadata or file data', () => {
      const d = readDelta(p('ab.ibudelta'));
      const i = describeDelta(d);
      const sum = (ts: Array<{ payloadBytes: number }>) => ts.reduce((n, t) => n + t.payloadBytes, 0);
      assert.equal(i.byKind.zero.payloadBytes + i.byKind.copy.payloadBytes, 0);
      assert.equal(sum(Object.values(i.byKind)), d.payloadLength);
      assert.equal(i.metadata.payloadBytes + i.fileData.payloadBytes, d.payloadLength);
      assert.equal(sum(i.byDirectory), i.fileData.payloadBytes);
      assert.equal(
        i.bytes,
        Object.values(i.sections).reduce((n, x) => n + x, 0),
      );
      assert.equal(
        Object.values(i.byKind).reduce((n, t) => n + t.targetBytes, 0),
        d.header.target.size,
      );
      assert.deepEqual(i.byDirectory.map((x) => x.directory).sort(), ['/boot', '/etc', '/opt', '/usr']);
      assert.ok(i.metadata.ops > 0, 'inode tables and bitmaps changed');
      // Directories are metadata: only regular files are listed as files.
      assert.deepEqual(i.largestFiles.map((f) => f.path).sort(), ['/boot/vmlinuz', '/etc/ibu/image.json', '/opt/x/y', '/usr/bin/app', '/usr/lib/new.so']);
      assert.equal(i.largestFiles.find((f) => f.path === '/usr/lib/new.so')!.type, 'replace');
      assert.equal(i.largestFiles.find((f) => f.path === '/usr/bin/app')!.srcPath, '/usr/bin/app');
    });

    it('prints the breakdown for a person and as JSON', () => {
      const text = runIbu(['delta', 'info', p('ab.ibudelta')]);
      assert.equal(text.code, 0, text.stderr);
      const out = text.stdout.toString();
      for (const want of [/1 → 2/, /by op kind/, /^ {2}PATCH /m, /metadata, directories/, /^ {2}\/boot /m, /\/usr\/lib\/new\.so {2}replaced/])
        assert.match(out, want);
      const json = runIbu(['delta', 'info', '--json', p('ab.ibudelta')]);
      assert.equal(json.code, 0, json.stderr);
      assert.deepEqual(JSON.parse(json.stdout.toString()), JSON.parse(JSON.stringify(describeDelta(readDelta(p('ab.ibudelta'))))));
    });
  });
});
