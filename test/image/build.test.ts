import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildImage } from '../../src/image/build.js';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { productIdentity } from '../../src/image/product-identity.js';
import { isIbuError } from '../../src/errors.js';
import { baseSpec, content, makeTree, tmpDir, sh, fsckClean, nonZeroFreeBlocks } from './build-fixtures.js';

const MB = 1024 * 1024;
const work = tmpDir('build');
after(() => fs.rmSync(work, { recursive: true, force: true }));

const treeA = path.join(work, 'tree-a');
makeTree(treeA, baseSpec(), { mtime: 1_600_000_000 });
// The same tree reached another way: reverse creation order, other mtimes (which are not content).
const treeB = path.join(work, 'tree-b');
makeTree(treeB, baseSpec(), { reverse: true, mtime: 1_700_000_123 });

test('the same tree gives a byte-identical image, whatever order it was created in', async () => {
  const a1 = await buildImage({ root: treeA, version: '1.0.0', size: 64 * MB, out: path.join(work, 'a1.img') });
  const a2 = await buildImage({ root: treeA, version: '1.0.0', size: 64 * MB, out: path.join(work, 'a2.img') });
  const b = await buildImage({ root: treeB, version: '1.0.0', size: 64 * MB, out: path.join(work, 'b.img') });
  assert.equal(a1.sha256, a2.sha256);
  assert.equal(a1.sha256, b.sha256);
  assert.ok(fs.readFileSync(a1.path).equals(fs.readFileSync(b.path)), 'images differ byte for byte');
  assert.equal(a1.treeDigest, b.treeDigest);
  assert.equal(a1.layout, 'fresh');
  assert.ok(fsckClean(a1.path), 'e2fsck -fn finds problems');
  // Changing one byte of content changes the image: the test above can fail.
  fs.writeFileSync(path.join(treeB, 'etc/hostname'), 'other-hn\n');
  const b2 = await buildImage({ root: treeB, version: '1.0.0', size: 64 * MB, out: path.join(work, 'b2.img') });
  assert.notEqual(b2.sha256, a1.sha256);
  assert.notEqual(b2.treeDigest, a1.treeDigest);
  // Never modified the user's tree: its mtimes are what we set.
  assert.equal(fs.lstatSync(path.join(treeA, 'usr/lib/big.so')).mtimeMs, 1_600_000_000_000);
});

test('the image carries the product identity, pinned times and /etc/ibu/image.json', async () => {
  const img = path.join(work, 'info.img');
  const res = await buildImage({ root: treeA, version: '2026.11.2', size: 64 * MB, out: img, product: 'backup-box', sourceDateEpoch: 1_700_000_000 });
  const id = productIdentity('backup-box');
  const r = Ext4Reader.open(img);
  try {
    assert.equal(r.superblock.uuid, id.uuid);
    const info = JSON.parse(r.readFile('/etc/ibu/image.json').toString('utf8'));
    assert.equal(info.version, '2026.11.2');
    assert.equal(info.product, 'backup-box');
    assert.equal(info.previousVersion, null);
    assert.equal(info.size, 64 * MB);
    assert.equal(info.sourceDateEpoch, 1_700_000_000);
    assert.equal(info.treeDigest, res.treeDigest);
    assert.deepEqual(info.kernel, { vmlinuz: '/boot/vmlinuz-6.1.0-1-amd64', initrd: '/boot/initrd.img-6.1.0-1-amd64' });
    assert.equal(r.stat('/etc/ibu/image.json').mode & 0o7777, 0o644);
    // Content, modes and links came through.
    assert.ok(r.readFile('/usr/lib/big.so').equals(fs.readFileSync(path.join(treeA, 'usr/lib/big.so'))));
    assert.equal(r.stat('/etc/secret').mode & 0o7777, 0o600);
    assert.equal(r.readlink('/vmlinuz'), 'boot/vmlinuz-6.1.0-1-amd64');
    assert.equal(r.stat('/usr/bin/tool').ino, r.stat('/usr/bin/tool-alias').ino);
  } finally {
    r.close();
  }
  // Every inode time is the source date (debugfs as the oracle).
  const st = sh('debugfs', ['-R', 'stat /usr/lib/big.so', img]).stdout;
  for (const f of ['ctime', 'atime', 'mtime', 'crtime']) assert.match(st, new RegExp(`${f}: 0x6553f100:00000000`), f);
  const sb = sh('dumpe2fs', ['-h', img]).stdout;
  assert.match(sb, /Directory Hash Seed:\s+(\S+)/);
  assert.equal(/Directory Hash Seed:\s+(\S+)/.exec(sb)![1], id.hashSeed);
});

test('the output is sparse and every free block reads as zeros', async () => {
  const res = await buildImage({ root: treeA, version: '1.0.0', size: 128 * MB, out: path.join(work, 'sparse.img') });
  const st = fs.statSync(res.path);
  assert.equal(st.size, 128 * MB);
  assert.equal(res.allocatedBytes, st.blocks * 512);
  // About 8 MB of content and metadata in a 128 MiB image: most of it must be holes.
  assert.ok(st.blocks * 512 < 24 * MB, `allocated ${st.blocks * 512} bytes`);
  assert.equal(nonZeroFreeBlocks(res.path), 0);
});

test('a tree without /vmlinuz or /initrd.img is refused unless --no-kernel', async () => {
  const t = path.join(work, 'nokernel');
  makeTree(
    t,
    baseSpec().filter((e) => e.path !== 'initrd.img'),
  );
  // A link that resolves on the host but not inside the tree does not count.
  fs.symlinkSync('/etc/os-release', path.join(t, 'initrd.img'));
  const out = path.join(work, 'nokernel.img');
  await assert.rejects(
    buildImage({ root: t, version: '1', size: 64 * MB, out }),
    (e: unknown) => isIbuError(e, 'IMAGE_NO_KERNEL') && /initrd\.img/.test(e.message),
  );
  assert.ok(!fs.existsSync(out) && !fs.existsSync(`${out}.partial`));
  const res = await buildImage({ root: t, version: '1', size: 64 * MB, out, noKernel: true });
  assert.ok(fsckClean(res.path));
});

test('a tree larger than --size is refused and says by how much', async () => {
  const t = path.join(work, 'big-tree');
  makeTree(t, [...baseSpec(), { path: 'var/blob', kind: 'file', size: 40 * MB }]);
  const out = path.join(work, 'toosmall.img');
  await assert.rejects(buildImage({ root: t, version: '1', size: 32 * MB, out }), (e: unknown) => {
    assert.ok(isIbuError(e, 'IMAGE_TOO_SMALL'), String(e));
    assert.match(e.message, /short by about \d+\.\d MiB/);
    const short = e.details!.shortBytes as number;
    // 40 MiB + ~4 MiB of tree into ~26 MiB of room: short by roughly 18 MiB.
    assert.ok(short > 10 * MB && short < 25 * MB, `short ${short}`);
    return true;
  });
  assert.ok(!fs.existsSync(out) && !fs.existsSync(`${out}.partial`));
});

test('what the estimate cannot see (xattr blocks) still fails as IMAGE_TOO_SMALL from mke2fs', async () => {
  const t = path.join(work, 'xattr-tree');
  makeTree(t, baseSpec());
  // A 17 MiB file fills most of a 32 MiB image, then 1,500 files with a 3,000-byte xattr each:
  // one xattr block per file, ~6 MB the scan does not count (Node has no xattr API; python3 is
  // in scripts/install-deps.sh).
  fs.writeFileSync(path.join(t, 'var/blob'), content('blob', 17 * MB));
  const py = sh('python3', [
    '-c',
    `import os\nfor i in range(1500):\n  p=os.path.join(${JSON.stringify(t)},'var','x%d' % i); open(p,'w').close(); os.setxattr(p,'user.big',b'a'*3000)`,
  ]);
  assert.equal(py.code, 0, py.stderr);
  const out = path.join(work, 'xattr.img');
  await assert.rejects(buildImage({ root: t, version: '1', size: 32 * MB, out }), (e: unknown) => {
    assert.ok(isIbuError(e, 'IMAGE_TOO_SMALL'), String(e));
    assert.match(e.message, /does not fit into .*Could not allocate block.*larger --size/);
    return true;
  });
  assert.ok(!fs.existsSync(out) && !fs.existsSync(`${out}.partial`));
  // A sparse file counts by what it holds, not by its apparent size.
  const s = path.join(work, 'sparse-tree');
  makeTree(s, baseSpec());
  fs.writeFileSync(path.join(s, 'var/sparse'), '');
  fs.truncateSync(path.join(s, 'var/sparse'), 200 * MB);
  const res = await buildImage({ root: s, version: '1', size: 64 * MB, out: path.join(work, 'sparse-src.img') });
  assert.ok(fsckClean(res.path));
});

test('bad input gets a clear error and leaves no file behind', async () => {
  const out = path.join(work, 'bad.img');
  await assert.rejects(buildImage({ root: path.join(work, 'nope'), version: '1', size: 64 * MB, out }), (e: unknown) => isIbuError(e, 'IMAGE_SOURCE_MISSING'));
  await assert.rejects(buildImage({ root: treeA, version: 'v1..2', size: 64 * MB, out }), (e: unknown) => isIbuError(e, 'VERSION_INVALID'));
  await assert.rejects(buildImage({ tar: path.join(work, 'nope.tar'), version: '1', size: 64 * MB, out }), (e: unknown) =>
    isIbuError(e, 'IMAGE_SOURCE_MISSING'),
  );
  await assert.rejects(buildImage({ root: treeA, version: '1', size: 64 * MB, out, previous: path.join(work, 'nope.img') }), (e: unknown) =>
    isIbuError(e, 'IMAGE_SOURCE_MISSING'),
  );
  // A good image already at OUT survives a failed build untouched.
  fs.writeFileSync(out, 'good image');
  await assert.rejects(buildImage({ root: treeA, version: '1', size: 1 * MB, out }), (e: unknown) => isIbuError(e, 'IMAGE_TOO_SMALL'));
  assert.equal(fs.readFileSync(out, 'utf8'), 'good image');
  assert.ok(!fs.existsSync(`${out}.partial`));
});

test('--tar builds the same image as the extracted tree, and needs root', async () => {
  const tar = path.join(work, 'root.tar');
  assert.equal(sh('tar', ['--numeric-owner', '-cf', tar, '-C', treeA, '.']).code, 0);
  const fromTar = await buildImage({ tar, version: '1.0.0', size: 64 * MB, out: path.join(work, 'tar.img') });
  const fromDir = await buildImage({ root: treeA, version: '1.0.0', size: 64 * MB, out: path.join(work, 'dir.img') });
  assert.equal(fromTar.sha256, fromDir.sha256);
  process.env.IBU_ASSUME_NON_ROOT = '1';
  try {
    await assert.rejects(buildImage({ tar, version: '1', size: 64 * MB, out: path.join(work, 'tar2.img') }), (e: unknown) => isIbuError(e, 'ROOT_REQUIRED'));
  } finally {
    delete process.env.IBU_ASSUME_NON_ROOT;
  }
});
