import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { applyDelta, makeDelta, readDelta, readDeltaHeader } from '../../src/delta/index.js';
import { binaryish, debugfsEdit, imageJson, makeImage, mutate, tempDir, writeTree, type TreeEntry } from './fixture.js';

// Round trips on real ext4 images (mke2fs -d, debugfs -w): apply(A, make(A, B)) must be B, byte for byte.

const MODULES = 40;

function treeA(): Record<string, TreeEntry> {
  const t: Record<string, TreeEntry> = {
    'etc/ibu/image.json': imageJson('1.0'),
    'etc/hosts': '127.0.0.1 localhost\n',
    'etc/motd': 'welcome\n',
    'usr/bin/tool': binaryish(1, 600_000),
    'usr/bin/gone': binaryish(2, 50_000),
    'usr/lib/libfoo.so.1.2.3': binaryish(3, 300_000),
    'usr/lib/libfoo.so.1': { symlink: 'libfoo.so.1.2.3' },
    'var/lib/data.bin': { sparse: 8 << 20, at: [[1 << 20, binaryish(4, 70_000)]] },
    'usr/share/doc/readme': 'x'.repeat(5000),
  };
  for (let i = 0; i < MODULES; i++) t[`usr/lib/modules/6.1.0-26-amd64/kernel/m${i}.ko`] = binaryish(100 + i, 5_000 + i * 700);
  return t;
}

function treeB(): Record<string, TreeEntry> {
  const a = treeA();
  const t: Record<string, TreeEntry> = {
    ...a,
    'etc/ibu/image.json': imageJson('1.1'),
    'etc/motd': 'welcome to 1.1\n',
    'usr/bin/tool': mutate(a['usr/bin/tool'] as Buffer, 7, 6),
    'usr/lib/libfoo.so.1.2.4': mutate(a['usr/lib/libfoo.so.1.2.3'] as Buffer, 8, 3),
    'usr/lib/libfoo.so.1': { symlink: 'libfoo.so.1.2.4' },
    'usr/bin/added': binaryish(9, 40_000),
    'var/lib/data.bin': {
      sparse: 12 << 20,
      at: [
        [1 << 20, mutate(binaryish(4, 70_000), 10, 2)],
        [10 << 20, Buffer.from('tail')],
      ],
    },
  };
  delete t['usr/bin/gone'];
  delete t['usr/lib/libfoo.so.1.2.3'];
  for (let i = 0; i < MODULES; i++) {
    const old = a[`usr/lib/modules/6.1.0-26-amd64/kernel/m${i}.ko`] as Buffer;
    t[`usr/lib/modules/6.1.0-28-amd64/kernel/m${i}.ko`] = mutate(old, 200 + i, 2, 24);
  }
  return t;
}

async function roundTrip(dir: string, a: string, b: string, name: string) {
  const delta = path.join(dir, `${name}.ibudelta`);
  const out = path.join(dir, `${name}.out.img`);
  const stats = await makeDelta({ fromImage: a, toImage: b, out: delta, jobs: 1 });
  const res = await applyDelta({ sourceImage: a, delta, out });
  assert.ok(fs.readFileSync(out).equals(fs.readFileSync(b)), `${name}: the applied image differs from B`);
  assert.equal(fs.existsSync(`${out}.partial`), false);
  assert.equal(fs.existsSync(`${delta}.partial`), false);
  return { stats, res, delta, out };
}

describe('delta round trips', () => {
  const tmp = tempDir();
  const A = path.join(tmp.dir, 'a.img');
  const B = path.join(tmp.dir, 'b.img');

  before(async () => {
    writeTree(path.join(tmp.dir, 'ta'), treeA());
    writeTree(path.join(tmp.dir, 'tb'), treeB());
    fs.chmodSync(path.join(tmp.dir, 'tb/etc/hosts'), 0o600); // metadata-only change
    await makeImage(path.join(tmp.dir, 'ta'), A);
    await makeImage(path.join(tmp.dir, 'tb'), B);
  });
  after(() => tmp.cleanup());

  it('rebuilds a freshly built B: changed, renamed, added, removed, sparse and chmod-ed files', async () => {
    const { stats, res, delta } = await roundTrip(tmp.dir, A, B, 'fresh');
    assert.equal(stats.fromVersion, '1.0');
    assert.equal(stats.toVersion, '1.1');
    assert.equal(res.toVersion, '1.1');
    assert.equal(res.failedOps.length, 0);
    // The versioned module directory and libfoo.so.1.2.3 → 1.2.4 are diffed against their old names.
    assert.ok(stats.files.byRename >= MODULES + 1, `expected renamed matches, got ${JSON.stringify(stats.files)}`);
    assert.ok(stats.ops.patch > 0 && stats.ops.copy > 0 && stats.ops.zero > 0);
    // Small edits cost little: the delta is far smaller than the bytes it patches.
    assert.ok(stats.bytes < stats.targetBytes.patch / 10, `delta ${stats.bytes} bytes for ${stats.targetBytes.patch} patched bytes`);
    const d = readDelta(delta);
    const paths = d.ops.flatMap((o) => (o.type === 'patch' ? [[o.path, o.srcPath]] : []));
    assert.ok(paths.some(([p, s]) => p === '/usr/lib/libfoo.so.1.2.4' && s === '/usr/lib/libfoo.so.1.2.3'));
    assert.ok(paths.some(([p, s]) => p === '/usr/lib/modules/6.1.0-28-amd64/kernel/m3.ko' && s === '/usr/lib/modules/6.1.0-26-amd64/kernel/m3.ko'));
    const ob = fs.statSync(path.join(tmp.dir, 'fresh.out.img'));
    assert.ok(ob.blocks * 512 < ob.size / 2, 'the output is sparse');
  });

  it('rebuilds B edited in place (layout kept, as with --previous), mostly by COPY at the same offsets', async () => {
    const B2 = path.join(tmp.dir, 'b2.img');
    fs.copyFileSync(A, B2);
    const t = treeB();
    const src = path.join(tmp.dir, 'tb');
    await debugfsEdit(B2, [
      'rm /usr/bin/tool',
      `write ${src}/usr/bin/tool /usr/bin/tool`,
      'rm /etc/ibu/image.json',
      `write ${src}/etc/ibu/image.json /etc/ibu/image.json`,
      'rm /usr/bin/gone',
      `write ${src}/usr/bin/added /usr/bin/added`,
      'mkdir /usr/lib/modules/6.1.0-28-amd64',
      'mkdir /usr/lib/modules/6.1.0-28-amd64/kernel',
      ...Array.from({ length: 8 }, (_, i) => `write ${src}/usr/lib/modules/6.1.0-28-amd64/kernel/m${i}.ko /usr/lib/modules/6.1.0-28-amd64/kernel/m${i}.ko`),
      'set_inode_field /etc/hosts mode 0100600',
    ]);
    assert.ok(t);
    const { stats } = await roundTrip(tmp.dir, A, B2, 'inplace');
    const same = readDelta(path.join(tmp.dir, 'inplace.ibudelta')).ops.filter((o) => o.type === 'copy' && o.src === o.dst);
    assert.ok(same.length > 0, 'unchanged files are copied from the same offsets');
    assert.ok(stats.targetBytes.copy > 2 * stats.targetBytes.patch, `copy bytes ${stats.targetBytes.copy}, patch bytes ${stats.targetBytes.patch}`);
    assert.equal(stats.toVersion, '1.1');
  });

  it('rebuilds identical images with COPY and ZERO ops only', async () => {
    const { stats } = await roundTrip(tmp.dir, A, A, 'same');
    assert.equal(stats.ops.patch + stats.ops.replace, 0);
    assert.equal(stats.segments, 0);
    assert.equal(readDeltaHeader(path.join(tmp.dir, 'same.ibudelta')).fromVersion, '1.0');
  });

  it('works on 1 KiB-block images of different sizes, with small segments', async () => {
    const a1 = path.join(tmp.dir, 'a1k.img');
    const b1 = path.join(tmp.dir, 'b1k.img');
    await makeImage(path.join(tmp.dir, 'ta'), a1, { blockSize: 1024, size: '24M' });
    await makeImage(path.join(tmp.dir, 'tb'), b1, { blockSize: 1024, size: '28M' });
    const delta = path.join(tmp.dir, '1k.ibudelta');
    const out = path.join(tmp.dir, '1k.out.img');
    // Tiny segment limits force many segments and split files.
    const stats = await makeDelta({
      fromImage: a1,
      toImage: b1,
      out: delta,
      jobs: 2,
      limits: { maxSegmentOutput: 64 << 10, maxSegmentDict: 96 << 10, maxCopy: 16 << 10 },
    });
    assert.ok(stats.segments > 5, `segments ${stats.segments}`);
    await applyDelta({ sourceImage: a1, delta, out });
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(b1)));
  });
});
