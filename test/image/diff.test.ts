// test-needs: root (files owned by another user). scripts/test-files.sh reads this line.
/**
 * Image diff on two real mke2fs images that differ in every way an upgrade can: added,
 * removed, content (same size and different size, also past the first 1 MiB), mode, owner,
 * symlink target and type changes, plus differences that must NOT count (mtime, physical
 * layout, link count).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { diffImageFiles } from '../../src/image/diff.js';
import { makeTree, mkfs, seededBytes, tempDir, type TreeSpec } from '../helpers/ext4-images.js';
import { runIbu } from '../helpers/cli.js';

const work = tempDir('ibu-image-diff');
let a: string;
let b: string;
const big = seededBytes(2 * 1024 * 1024 + 5, 11);
const bigChanged = Buffer.from(big);
bigChanged[bigChanged.length - 1] ^= 1;

const base = (): TreeSpec => ({
  'same.txt': { type: 'file', content: 'same\n', mtime: 1_600_000_000 },
  'content.txt': 'aaaa',
  'grow.txt': 'x',
  'removed.txt': 'bye',
  'mode.sh': { type: 'file', content: '#!/bin/sh\n', mode: 0o644 },
  'owner.txt': 'o',
  link: { type: 'symlink', target: 'a' },
  kind: 'file',
  'big.bin': big,
  'big2.bin': big,
  dir: { type: 'dir', children: { keep: 'k' } },
});

before(() => {
  const ta = path.join(work, 'a');
  const tb = path.join(work, 'b');
  fs.mkdirSync(ta);
  fs.mkdirSync(tb);
  makeTree(ta, base());
  const nb = base();
  delete nb['removed.txt'];
  Object.assign(nb, {
    '0-first.bin': seededBytes(300_000, 4), // shifts the physical layout of what follows
    'same.txt': { type: 'file', content: 'same\n', mtime: 1_700_000_000 },
    'content.txt': 'bbbb',
    'grow.txt': 'xy',
    'mode.sh': { type: 'file', content: '#!/bin/sh\n', mode: 0o755 },
    link: { type: 'symlink', target: 'b' },
    kind: { type: 'dir', children: { child: 'c' } },
    'big2.bin': bigChanged,
    'added.txt': 'new',
    newdir: { type: 'dir', children: { f: 'f' } },
    hl: { type: 'hardlink', to: 'same.txt' },
  });
  makeTree(tb, nb);
  fs.chownSync(path.join(tb, 'owner.txt'), 1000, 1000); // tests run as root (CI is root)
  a = mkfs(ta, path.join(work, 'a.img'), { size: 32 * 1024 * 1024, blockSize: 4096 });
  b = mkfs(tb, path.join(work, 'b.img'), { size: 32 * 1024 * 1024, blockSize: 4096 });
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

const expected = {
  added: ['/0-first.bin', '/added.txt', '/hl', '/kind/child', '/newdir', '/newdir/f'],
  removed: ['/removed.txt'],
  changed: ['/big2.bin', '/content.txt', '/grow.txt', '/kind', '/link', '/mode.sh', '/owner.txt'],
  details: [
    { path: '/big2.bin', changes: ['content'] },
    { path: '/content.txt', changes: ['content'] },
    { path: '/grow.txt', changes: ['content'] },
    { path: '/kind', changes: ['type'] },
    { path: '/link', changes: ['target'] },
    { path: '/mode.sh', changes: ['mode'] },
    { path: '/owner.txt', changes: ['owner'] },
  ],
};

describe('image diff', () => {
  it('finds exactly what an upgrade changes, and nothing else', () => {
    assert.deepEqual(diffImageFiles(a, b), expected);
  });

  it('is the mirror image the other way round and empty against itself', () => {
    const back = diffImageFiles(b, a);
    assert.deepEqual(back.added, expected.removed);
    assert.deepEqual(back.removed, expected.added);
    assert.deepEqual(back.changed, expected.changed);
    assert.deepEqual(diffImageFiles(a, a), { added: [], removed: [], changed: [], details: [] });
  });

  it('ibu image diff --json prints the same object; the text form is one line per path', () => {
    const r = runIbu(['image', 'diff', a, b, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.toString()), expected);
    const text = runIbu(['image', 'diff', a, b]).stdout.toString();
    assert.match(text, /^A \/added\.txt$/m);
    assert.match(text, /^D \/removed\.txt$/m);
    assert.match(text, /^M \/mode\.sh \(mode\)$/m);
    assert.match(text, /^6 added, 1 removed, 7 changed$/m);
  });
});
