// test-needs: root (--previous loop-mounts the image; CI runs as root). scripts/test-files.sh reads this line.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildImage } from '../../src/image/build.js';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { isIbuError } from '../../src/errors.js';
import { baseSpec, content, debugfsBlocks, makeTree, tmpDir, fsckClean, nonZeroFreeBlocks, type TreeEntry } from './build-fixtures.js';

const MB = 1024 * 1024;
const work = tmpDir('build-prev');
after(() => fs.rmSync(work, { recursive: true, force: true }));

const oldSpec = baseSpec();
const changed = ['etc/hostname', 'usr/bin/tool', 'usr/share/pkg3/file-5.txt'];
const deleted = (e: TreeEntry): boolean => e.path.startsWith('usr/share/pkg6');
const newSpec: TreeEntry[] = [
  // etc/hostname keeps its size and gets new bytes: only a content check can see it.
  ...oldSpec
    .filter((e) => !deleted(e))
    .map((e) => (changed.includes(e.path) ? { ...e, seed: `${e.path}:v2`, size: e.path === 'usr/bin/tool' ? 80_000 : e.size } : e)),
  { path: 'usr/share/new', kind: 'dir' },
  ...Array.from({ length: 20 }, (_, i): TreeEntry => ({ path: `usr/share/new/n${i}.bin`, kind: 'file', size: 5000 + i * 1000 })),
];
const oldTree = path.join(work, 'old');
const newTree = path.join(work, 'new');
makeTree(oldTree, oldSpec);
makeTree(newTree, newSpec);
const unchangedFiles = newSpec
  .filter((e) => e.kind === 'file' && (e.size ?? 0) > 0 && !changed.includes(e.path) && oldSpec.some((o) => o.path === e.path))
  .map((e) => `/${e.path}`);

const prevImg = path.join(work, 'v1.img');
const prevReady = buildImage({ root: oldTree, version: '1.0.0', size: 64 * MB, out: prevImg });

function moved(a: string, b: string, files: string[]): string[] {
  const x = debugfsBlocks(a, files);
  const y = debugfsBlocks(b, files);
  const out: string[] = [];
  for (const f of files) {
    assert.ok(x.get(f), `no blocks for ${f} in ${a}`);
    if (x.get(f) !== y.get(f)) out.push(`${f}: ${x.get(f)} -> ${y.get(f)}`);
  }
  return out;
}

test('--previous keeps the blocks of every unchanged file and carries the changes', async () => {
  await prevReady;
  const res = await buildImage({ root: newTree, version: '2.0.0', size: 64 * MB, out: path.join(work, 'v2.img'), previous: prevImg });
  assert.equal(res.layout, 'previous');
  assert.equal(res.previousVersion, '1.0.0');
  assert.ok(unchangedFiles.length > 250);
  assert.deepEqual(moved(prevImg, res.path, unchangedFiles), [], 'unchanged files whose blocks moved');

  const r = Ext4Reader.open(res.path);
  try {
    for (const p of changed) assert.ok(r.readFile(`/${p}`).equals(content(`${p}:v2`, newSpec.find((e) => e.path === p)!.size!)), p);
    assert.ok(r.readFile('/usr/share/new/n19.bin').equals(content('usr/share/new/n19.bin', 24_000)));
    assert.throws(
      () => r.stat('/usr/share/pkg6'),
      (e: unknown) => isIbuError(e, 'IMAGE_PATH_NOT_FOUND'),
    );
    assert.ok(r.stat('/lost+found').type === 'dir');
    const info = JSON.parse(r.readFile('/etc/ibu/image.json').toString('utf8'));
    assert.equal(info.version, '2.0.0');
    assert.equal(info.previousVersion, '1.0.0');
    assert.equal(r.stat('/usr/bin/tool').ino, r.stat('/usr/bin/tool-alias').ino, 'hard link kept');
  } finally {
    r.close();
  }
  assert.ok(fsckClean(res.path), 'e2fsck -fn finds problems');
  // Deleted files' blocks were trimmed: every free block reads as zeros.
  assert.equal(nonZeroFreeBlocks(res.path), 0);

  // A fresh build of the same tree moves files (so the check above can fail) ...
  const fresh = await buildImage({ root: newTree, version: '2.0.0', size: 64 * MB, out: path.join(work, 'v2-fresh.img') });
  assert.ok(moved(prevImg, fresh.path, unchangedFiles).length > 0);
  // ... and --previous again gives the same bytes: times, generations, journal and superblock are pinned.
  const again = await buildImage({ root: newTree, version: '2.0.0', size: 64 * MB, out: path.join(work, 'v2-again.img'), previous: prevImg });
  assert.equal(again.sha256, res.sha256);
});

test('--previous with many new directories, files and symlinks: two builds give the same bytes', async () => {
  await prevReady;
  // A new kernel's modules in miniature: new directories, each with files, a symlink and a
  // subdirectory. rsync makes directories and symlinks in one process and files in another;
  // before they were made in separate passes, every build here came out different (8 of 8).
  const extra: TreeEntry[] = [{ path: 'usr/lib/modules', kind: 'dir' }];
  for (let d = 0; d < 150; d++) {
    extra.push({ path: `usr/lib/modules/d${d}`, kind: 'dir' });
    for (let f = 0; f < 6; f++) extra.push({ path: `usr/lib/modules/d${d}/f${f}.ko`, kind: 'file', size: 1000 + f * 3000 });
    extra.push({ path: `usr/lib/modules/d${d}/link`, kind: 'symlink', target: 'f0.ko' });
    extra.push({ path: `usr/lib/modules/d${d}/sub`, kind: 'dir' });
    extra.push({ path: `usr/lib/modules/d${d}/sub/x`, kind: 'file', size: 700 });
  }
  const tree = path.join(work, 'many-new');
  makeTree(tree, [...oldSpec, ...extra]);
  const sums = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const r = await buildImage({ root: tree, version: '2.0.0', size: 64 * MB, out: path.join(work, `many-new-${i}.img`), previous: prevImg });
    sums.add(r.sha256);
    assert.equal(nonZeroFreeBlocks(r.path), 0, 'free blocks (an old journal among them) read as zeros');
    fs.rmSync(r.path);
  }
  assert.equal(sums.size, 1, `three builds, ${sums.size} different images`);
});

test('--previous with another --size resizes the copy (grow and shrink) and keeps the blocks', async () => {
  await prevReady;
  const res = await buildImage({ root: newTree, version: '2.0.0', size: 96 * MB, out: path.join(work, 'v2-big.img'), previous: prevImg });
  assert.equal(res.layout, 'previous');
  assert.equal(fs.statSync(res.path).size, 96 * MB);
  assert.deepEqual(moved(prevImg, res.path, unchangedFiles), []);
  assert.ok(fsckClean(res.path));
  // Shrinking works too (resize2fs moves only what lies beyond the new end).
  const small = await buildImage({ root: newTree, version: '2.0.0', size: 48 * MB, out: path.join(work, 'v2-small.img'), previous: prevImg });
  assert.equal(small.layout, 'previous');
  assert.equal(fs.statSync(small.path).size, 48 * MB);
  assert.ok(fsckClean(small.path));
  assert.ok(moved(prevImg, small.path, unchangedFiles).length < unchangedFiles.length / 10);
});

test('without root, --previous warns and builds a fresh layout', async () => {
  await prevReady;
  const warnings: string[] = [];
  process.env.IBU_ASSUME_NON_ROOT = '1';
  let res;
  try {
    res = await buildImage({
      root: newTree,
      version: '2.0.0',
      size: 64 * MB,
      out: path.join(work, 'v2-nonroot.img'),
      previous: prevImg,
      onWarning: (m) => warnings.push(m),
    });
  } finally {
    delete process.env.IBU_ASSUME_NON_ROOT;
  }
  assert.equal(res.layout, 'fresh');
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /--previous needs root/);
  const fresh = await buildImage({ root: newTree, version: '2.0.0', size: 64 * MB, out: path.join(work, 'v2-fresh2.img') });
  assert.equal(res.sha256, fresh.sha256);
});
