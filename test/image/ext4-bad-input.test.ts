/**
 * Bad input for the ext4 reader: random bytes, truncation, bad magic, a directory loop,
 * extents pointing outside the image, absurd counts and depths. Each must give IbuError
 * IMAGE_INVALID with a message, never a crash or a hang. Corruptions are made with the real
 * debugfs -w (set_inode_field, ln) or by patching bytes at offsets debugfs reports.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { IbuError, isIbuError } from '../../src/errors.js';
import { debugfs, makeTree, mkfs, parseStatBlocks, seededBytes, tempDir } from '../helpers/ext4-images.js';

const MiB = 1024 * 1024;
const work = tempDir('ibu-ext4-bad');
let good: string; // a small valid ext4 image (1 KiB blocks)
let goodExt2: string;

before(() => {
  const t = path.join(work, 't');
  fs.mkdirSync(t);
  makeTree(t, {
    a: { type: 'dir', children: { b: { type: 'dir', children: { 'f.txt': 'f\n' } } } },
    'file.bin': seededBytes(50_000, 3),
    link: { type: 'symlink', target: 'x'.repeat(100) },
  });
  good = mkfs(t, path.join(work, 'good.img'), { size: 4 * MiB, blockSize: 1024 });
  goodExt2 = mkfs(t, path.join(work, 'good2.img'), { size: 4 * MiB, blockSize: 1024, type: 'ext2' });
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

function copy(name: string, from = good): string {
  const p = path.join(work, name);
  fs.copyFileSync(from, p);
  return p;
}

function patch(img: string, offset: number, bytes: Buffer): void {
  const fd = fs.openSync(img, 'r+');
  fs.writeSync(fd, bytes, 0, bytes.length, offset);
  fs.closeSync(fd);
}

function assertInvalid(fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof IbuError, `expected an IbuError, got ${String(err)}`);
    assert.equal(err.code, 'IMAGE_INVALID', err.message);
    if (message) assert.match(err.message, message);
    return true;
  });
}

/** Opens, walks and reads everything. */
function readAll(img: string): void {
  const r = Ext4Reader.open(img);
  try {
    for (const e of r.walk()) {
      if (e.type === 'file') {
        r.readFile(e.ino);
        r.extents(e.ino);
      }
    }
  } finally {
    r.close();
  }
}

describe('ext4 reader on bad input', () => {
  it('reads the untouched images (the corruptions below are what fails)', () => {
    readAll(good);
    readAll(goodExt2);
  });

  it('refuses random bytes, an empty file and a tiny file', () => {
    const rnd = path.join(work, 'random.img');
    fs.writeFileSync(rnd, seededBytes(MiB, 42));
    assertInvalid(() => Ext4Reader.open(rnd), /not an ext4 filesystem/);
    const empty = path.join(work, 'empty.img');
    fs.writeFileSync(empty, '');
    assertInvalid(() => Ext4Reader.open(empty), /too small|not an ext4/);
    const tiny = path.join(work, 'tiny.img');
    fs.writeFileSync(tiny, Buffer.alloc(1100));
    assertInvalid(() => Ext4Reader.open(tiny));
  });

  it('refuses bad magic', () => {
    const img = copy('magic.img');
    patch(img, 1024 + 0x38, Buffer.from([0x12, 0x34]));
    assertInvalid(() => Ext4Reader.open(img), /0xEF53.*found 0x3412/);
  });

  it('refuses a truncated image and says so', () => {
    const img = copy('trunc.img');
    fs.truncateSync(img, 3 * MiB);
    assertInvalid(() => Ext4Reader.open(img), /truncated/);
  });

  it('reports a missing image file as NOT_FOUND', () => {
    assert.throws(
      () => Ext4Reader.open(path.join(work, 'nope.img')),
      (e) => isIbuError(e, 'NOT_FOUND'),
    );
  });

  it('detects a directory loop on walk', () => {
    const img = copy('loop.img');
    debugfs(img, ['ln /a /a/b/loop'], true);
    assert.match(debugfs(img, ['ls -l /a/b'])[0]!, /loop/);
    const r = Ext4Reader.open(img);
    try {
      assertInvalid(() => [...r.walk()], /loop/);
    } finally {
      r.close();
    }
  });

  it('refuses extents pointing outside the image', () => {
    const img = copy('outside.img');
    // i_block words 3..5 are the first leaf extent: logical, length|start_hi, start_lo.
    debugfs(img, ['sif /file.bin block[5] 0x7ffffff0'], true);
    const r = Ext4Reader.open(img);
    try {
      assertInvalid(() => r.extents('/file.bin'), /outside the filesystem/);
      assertInvalid(() => r.readFile('/file.bin'), /outside the filesystem/);
      assert.equal(r.stat('/file.bin').size, 50_000); // metadata is still readable
    } finally {
      r.close();
    }
  });

  it('refuses a block map pointing outside the image', () => {
    const img = copy('outside2.img', goodExt2);
    debugfs(img, ['sif /file.bin block[3] 0x7ffffff0'], true);
    const r = Ext4Reader.open(img);
    try {
      assertInvalid(() => r.readFile('/file.bin'), /outside the filesystem/);
    } finally {
      r.close();
    }
  });

  it('refuses a bad extent header, an absurd depth and absurd entry counts', () => {
    for (const [name, value, re] of [
      ['no-magic', '0x00040000', /magic/],
      ['deep', '0x00090004', /depth 9/],
      ['count', '0x0004ffff', /entries/],
    ] as const) {
      const img = copy(`${name}.img`);
      // word 0: magic | entries << 16; word 1: max | depth << 16
      const cmd =
        name === 'deep' ? `sif /file.bin block[1] ${value}` : name === 'count' ? `sif /file.bin block[0] 0x0010f30a` : `sif /file.bin block[0] ${value}`;
      debugfs(img, [cmd], true);
      const r = Ext4Reader.open(img);
      try {
        assertInvalid(() => r.readFile('/file.bin'), name === 'count' ? /entries/ : re);
      } finally {
        r.close();
      }
    }
  });

  it('refuses a corrupt directory block', () => {
    const img = copy('dir.img');
    const st = parseStatBlocks(debugfs(img, ['stat /a/b'])[0]!);
    const block = st.extents[0]!.physical;
    patch(img, block * 1024 + 4, Buffer.from([0x03, 0x00])); // rec_len 3
    const r = Ext4Reader.open(img);
    try {
      assertInvalid(() => r.list('/a/b'), /record length/);
      assertInvalid(() => [...r.walk()], /record length/);
    } finally {
      r.close();
    }
  });

  it('refuses absurd superblock counts', () => {
    for (const [name, off, bytes, re] of [
      ['bpg', 0x20, Buffer.from([0, 0, 0, 0]), /blocks per group/],
      ['ipg', 0x28, Buffer.from([0xff, 0xff, 0xff, 0x7f]), /inodes per group/],
      ['inodes', 0x00, Buffer.from([0xff, 0xff, 0xff, 0xff]), /inodes do not fit/],
      ['blocks', 0x04, Buffer.from([0xff, 0xff, 0xff, 0xff]), /truncated/],
      ['logbs', 0x18, Buffer.from([40, 0, 0, 0]), /block size/],
      ['isize', 0x58, Buffer.from([100, 0]), /inode size/],
    ] as const) {
      const img = copy(`sb-${name}.img`);
      patch(img, 1024 + off, bytes);
      assertInvalid(() => Ext4Reader.open(img), re);
    }
  });

  it('refuses absurd inode sizes and symlink lengths', () => {
    const img = copy('size.img', goodExt2);
    // 1 TiB: fine for an extent file, past what a 1 KiB block map reaches (about 16 GiB).
    debugfs(img, ['sif /file.bin size 0x10000000000', 'sif /link size 100000', 'sif /a/b/f.txt size 0x4000000000000'], true);
    const r = Ext4Reader.open(img);
    try {
      assertInvalid(() => r.readRange('/file.bin', 0, 10), /more than a block map can address/);
      assertInvalid(() => r.stat('/a/b/f.txt'), /more than any ext4 file can hold/);
      assertInvalid(() => r.stat('/link'), /target/);
    } finally {
      r.close();
    }
  });
});
