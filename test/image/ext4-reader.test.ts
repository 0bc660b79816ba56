/**
 * The ext4 reader held against the real debugfs on real mke2fs images: listings, inode
 * metadata, physical extents and file contents, over a matrix of block sizes and layouts
 * (ext4 1 KiB non-64bit with a 129 MiB file, ext4 4 KiB 64bit, ext2 and ext3 block maps,
 * inline data). The generated tree has about 3,000 files, an htree directory, hard links,
 * fast and slow symlinks, empty, sparse and fragmented files and non-ASCII names.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Ext4Reader, type Ext4Entry } from '../../src/image/ext4/index.js';
import { isIbuError } from '../../src/errors.js';
import {
  coalesce,
  debugfs,
  debugfsCat,
  dq,
  makeTree,
  mkfs,
  parseLsP,
  parseStatBlocks,
  tempDir,
  writePatternFile,
  type MkfsOptions,
} from '../helpers/ext4-images.js';
import { standardTree, type StandardTreeOptions } from '../helpers/ext4-trees.js';

const MiB = 1024 * 1024;
const BIG_SIZE = 129 * MiB + 4321;
const work = tempDir('ibu-ext4-reader');
after(() => fs.rmSync(work, { recursive: true, force: true }));

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const typeBits: Record<string, number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  fifo: 0o010000,
  chardev: 0o020000,
  blockdev: 0o060000,
  socket: 0o140000,
};

interface Case {
  name: string;
  opts: MkfsOptions;
  tree: StandardTreeOptions;
  big?: boolean; // add the 129 MiB file
  triple?: boolean; // add a sparse file reaching the triple-indirect block (block maps)
}

const root = process.getuid?.() === 0; // mknod needs root (CI runs as root)
const full: StandardTreeOptions = { fragmented: true, fifo: true, devices: root };
// A smaller tree where the full one adds nothing new; no sparse files with inline_data, which
// mke2fs 1.47.0 stores wrongly there (debugfs and the reader agree on the wrong result).
const small: StandardTreeOptions = { manyFiles: 120, nestedDirs: 3, perDir: 5, sizedFiles: 40, fifo: true };
const cases: Case[] = [
  {
    name: 'ext4, 1 KiB blocks, 32-bit descriptors, 129 MiB file',
    tree: full,
    opts: { type: 'ext4', blockSize: 1024, size: 320 * MiB, features: ['^64bit'], indexDirs: true },
    big: true,
  },
  { name: 'ext4, 4 KiB blocks, 64bit, flex_bg', tree: full, opts: { type: 'ext4', blockSize: 4096, size: 96 * MiB, indexDirs: true } },
  {
    name: 'ext2, 1 KiB blocks, block maps up to triple indirect',
    tree: full,
    opts: { type: 'ext2', blockSize: 1024, size: 96 * MiB, indexDirs: true },
    triple: true,
  },
  { name: 'ext3, 4 KiB blocks, block maps', tree: small, opts: { type: 'ext3', blockSize: 4096, size: 64 * MiB } },
  {
    name: 'ext4, 4 KiB blocks, inline_data',
    tree: { ...small, sparse: false },
    opts: { type: 'ext4', blockSize: 4096, size: 64 * MiB, features: ['inline_data'] },
  },
];

for (const c of cases) {
  describe(c.name, () => {
    let img: string;
    let r: Ext4Reader;
    let entries: Ext4Entry[];
    let caseSrc: string;

    before(() => {
      caseSrc = path.join(work, `tree-${cases.indexOf(c)}`);
      fs.mkdirSync(caseSrc);
      makeTree(caseSrc, standardTree(c.tree));
      if (c.big) writePatternFile(path.join(caseSrc, 'big.bin'), BIG_SIZE);
      if (c.triple) {
        const fd = fs.openSync(path.join(caseSrc, 'triple.bin'), 'w');
        for (const mib of [0, 1, 40, 66, 70]) fs.writeSync(fd, Buffer.alloc(65536, mib + 1), 0, 65536, mib * MiB);
        fs.ftruncateSync(fd, 71 * MiB);
        fs.closeSync(fd);
      }
      img = mkfs(caseSrc, path.join(work, `case-${cases.indexOf(c)}.img`), c.opts);
      r = Ext4Reader.open(img);
      entries = [...r.walk()];
    });
    after(() => {
      r?.close();
      fs.rmSync(img, { force: true });
      fs.rmSync(caseSrc, { recursive: true, force: true });
    });

    it('reads the superblock like dumpe2fs', () => {
      const out = debugfs(img, ['stats -h'])[0]!;
      const field = (name: string) => new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(out)?.[1]?.trim();
      assert.equal(r.blockSize, c.opts.blockSize);
      assert.equal(r.superblock.blocksCount, Number(field('Block count')));
      assert.equal(r.superblock.inodesCount, Number(field('Inode count')));
      assert.equal(r.superblock.freeBlocksCount, Number(field('Free blocks')));
      assert.equal(r.superblock.inodeSize, Number(field('Inode size')));
      assert.equal(r.superblock.uuid, field('Filesystem UUID'));
      assert.equal(r.superblock.is64bit, / 64bit/.test(field('Filesystem features') ?? ''));
    });

    it('walks every entry in path order, matching the source tree', () => {
      const paths = entries.map((e) => e.path);
      assert.equal(paths[0], '/');
      assert.deepEqual(
        paths,
        [...paths].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
      );
      const expected = ['/'];
      const visit = (rel: string) => {
        for (const name of fs.readdirSync(path.join(caseSrc, rel))) {
          const p = `${rel}/${name}`;
          expected.push(p);
          if (fs.lstatSync(path.join(caseSrc, p)).isDirectory()) visit(p);
        }
      };
      visit('');
      expected.push('/lost+found');
      assert.deepEqual(new Set(paths), new Set(expected));
      assert.equal(paths.length, expected.length);
      if (c.tree === full) assert.ok(paths.length > 3000, `only ${paths.length} entries`);
    });

    it('lists every directory exactly as debugfs ls -p does', () => {
      const dirs = entries.filter((e) => e.type === 'dir');
      const outs = debugfs(
        img,
        dirs.map((d) => `ls -p ${dq(d.path)}`),
      );
      dirs.forEach((d, i) => {
        const theirs = parseLsP(outs[i]!).sort((a, b) => (a.name < b.name ? -1 : 1));
        const ours = r.list(d.path);
        assert.deepEqual(
          ours.map((e) => path.posix.basename(e.path)),
          theirs.map((t) => t.name),
          `names of ${d.path}`,
        );
        ours.forEach((e, j) => {
          const t = theirs[j]!;
          assert.equal(e.ino, t.ino, `ino of ${e.path}`);
          assert.equal(typeBits[e.type]! | e.mode, t.mode, `mode of ${e.path}`);
          assert.equal(e.uid, t.uid);
          assert.equal(e.gid, t.gid);
          if (e.type !== 'dir') assert.equal(e.size, t.size, `size of ${e.path}`);
        });
      });
    });

    it('gives the same physical extents, link counts and sizes as debugfs stat', () => {
      const files = entries.filter((e) => e.type === 'file' || e.type === 'dir' || (e.type === 'symlink' && e.size >= 60));
      const outs = debugfs(
        img,
        files.map((f) => `stat <${f.ino}>`),
      );
      let checked = 0;
      files.forEach((f, i) => {
        const st = parseStatBlocks(outs[i]!);
        assert.equal(f.size, st.size, `size of ${f.path}`);
        assert.equal(f.nlink, Number(/Links: (\d+)/.exec(outs[i]!)![1]), `links of ${f.path}`);
        assert.deepEqual(coalesce(r.extents(f.ino)), coalesce(st.extents), `extents of ${f.path}`);
        checked++;
      });
      assert.ok(checked > (c.tree === full ? 3000 : 200));
    });

    it('reads every file with the same bytes as debugfs cat', () => {
      const files = entries.filter((e) => e.type === 'file' && e.size < 8 * MiB);
      const inline = !!c.opts.features?.includes('inline_data');
      const theirs = debugfsCat(
        img,
        files.map((f) => f.ino),
      );
      files.forEach((f, i) => {
        const ours = r.readFile(f.path);
        assert.equal(ours.length, f.size);
        // debugfs prints all 60 bytes of i_block for an inline-data file, whatever i_size says.
        assert.equal(sha(ours), sha(inline ? theirs[i]!.subarray(0, f.size) : theirs[i]!), `content of ${f.path}`);
        assert.equal(sha(ours), sha(fs.readFileSync(path.join(caseSrc, f.path))), `content of ${f.path} against the source tree`);
      });
    });

    it('reads symlink targets, fast and slow', () => {
      const links = entries.filter((e) => e.type === 'symlink');
      assert.ok(links.some((l) => l.size < 60) && links.some((l) => l.size > 60));
      for (const l of links) {
        assert.equal(r.readlink(l.path), fs.readlinkSync(path.join(caseSrc, l.path)));
        assert.equal(l.target, r.readlink(l.path));
        assert.equal(l.size, Buffer.byteLength(l.target!));
      }
      const outs = debugfs(
        img,
        links.filter((l) => l.size < 60).map((l) => `stat <${l.ino}>`),
      );
      for (const out of outs) {
        const dest = /Fast link dest: "(.*)"/.exec(out)?.[1];
        if (dest !== undefined) assert.ok(links.some((l) => l.target === dest));
      }
    });

    it('shows hard links as one inode under several names', () => {
      const names = ['/special/hard-a', '/special/hard-b', '/hard-c'].map((p) => r.stat(p));
      assert.equal(new Set(names.map((n) => n.ino)).size, 1);
      for (const n of names) assert.equal(n.nlink, 3);
    });

    it('reads sparse files with holes as zeros and no extents over the holes', { skip: c.tree.sparse === false }, () => {
      const e = r.stat('/special/sparse.img');
      assert.equal(e.size, 5 * MiB + 123);
      const data = r.readFile('/special/sparse.img');
      assert.equal(sha(data), sha(fs.readFileSync(path.join(caseSrc, 'special/sparse.img'))));
      const mapped = r.extents('/special/sparse.img').reduce((n, x) => n + x.length, 0) * r.blockSize;
      assert.ok(mapped < 64 * 1024, `${mapped} bytes mapped for 14 KB of data`);
      assert.equal(r.extents('/special/all-hole').length, 0);
      assert.ok(r.readFile('/special/all-hole').equals(Buffer.alloc(3 * MiB)));
      assert.equal(r.readFile('/special/empty').length, 0);
    });

    it('reads ranges at any offset, clipped at the end of the file', () => {
      const file = '/sizes/s0019.bin';
      const whole = fs.readFileSync(path.join(caseSrc, file));
      for (const [off, len] of [
        [0, 1],
        [1023, 2],
        [4095, 4098],
        [whole.length - 3, 100],
        [whole.length, 10],
        [whole.length + 5, 1],
        [7, 0],
      ] as const) {
        assert.ok(r.readRange(file, off, len).equals(whole.subarray(off, off + len)), `range ${off}+${len}`);
      }
    });

    it('resolves paths like lstat and open would', () => {
      assert.equal(r.stat('/special/dir-link').type, 'symlink');
      assert.equal(r.stat('/special/dir-link/e02/f1.txt').ino, r.stat('/nested/d01/e02/f1.txt').ino);
      assert.equal(r.readFile('/special/abs-link').toString(), 'hello, world\n');
      assert.equal(r.stat('/nested/d01/../d02/./e00/').path, '/nested/d02/e00');
      assert.equal(r.stat('/special/Grüße aus Köln.txt').size, 3);
      assert.equal(r.readFile('/special/日本語のファイル名').toString(), 'nihongo\n');
      assert.equal(r.stat('/special/script.sh').mode, 0o4755);
      assert.equal(r.stat('/special/private').mode, 0o700);
      assert.equal(r.stat('/special/pipe').type, 'fifo');
      if (c.tree.devices) {
        for (const [p, type, major, minor] of [
          ['/special/null', 'chardev', 1, 3],
          ['/special/nvme-part', 'blockdev', 259, 70000],
        ] as const) {
          const e = r.stat(p);
          assert.equal(e.type, type);
          assert.deepEqual(e.rdev, { major, minor });
          assert.match(debugfs(img, [`stat ${p}`])[0]!, new RegExp(`Device major/minor number: 0*${major}:0*${minor} `));
        }
      }
      for (const bad of ['/nope', '/special/hello.txt/x', '/special/dangling']) {
        assert.throws(
          () => (bad === '/special/dangling' ? r.readFile(bad) : r.stat(bad)),
          (e) => isIbuError(e, 'IMAGE_PATH_NOT_FOUND'),
        );
      }
      assert.throws(
        () => r.readFile('/nested'),
        (e) => isIbuError(e, 'USAGE'),
      );
    });

    if (c.opts.indexDirs && c.opts.type !== 'ext3') {
      it('reads an htree-indexed directory completely', () => {
        const out = debugfs(img, ['htree_dump /many'])[0]!;
        assert.match(out, /Root node dump/, 'e2fsck -D should have indexed /many');
        assert.equal(r.list('/many').length, 1500);
        assert.equal(r.readFile('/many/entry-with-a-longer-name-01234.conf').toString(), 'line 1234\n');
      });
    }

    if (c.opts.blockSize === 1024 && c.opts.type === 'ext4') {
      it('follows deep extent trees (depth 1 for the big file, 2 for the fragmented one)', () => {
        for (const [p, depth] of [
          ['/big.bin', 1],
          ['/special/fragmented.bin', 2],
        ] as const) {
          const out = debugfs(img, [`stat ${p}`])[0]!;
          const st = parseStatBlocks(out);
          assert.ok(st.treeBlocks.includes(`ETB${depth - 1}`), `debugfs shows no level-${depth - 1} tree block for ${p}`);
          assert.ok(r.extentTreeDepth(p) >= depth, `depth of ${p}`);
        }
        assert.ok(r.extents('/special/fragmented.bin').length >= 400);
      });
    }

    if (c.big) {
      it('reads the 129 MiB file like debugfs dump, whole and in ranges', () => {
        const out = path.join(work, 'big.dump');
        debugfs(img, [`dump /big.bin ${out}`]);
        const theirs = sha(fs.readFileSync(out));
        fs.rmSync(out);
        const h = createHash('sha256');
        for (let off = 0; off < BIG_SIZE; off += 8 * MiB) h.update(r.readRange('/big.bin', off, 8 * MiB));
        assert.equal(h.digest('hex'), theirs);
        assert.equal(sha(r.readFile('/big.bin')), theirs);
      });
    }

    if (c.triple) {
      it('maps a file through the triple-indirect block', () => {
        const st = parseStatBlocks(debugfs(img, ['stat /triple.bin'])[0]!);
        assert.ok(st.treeBlocks.includes('TIND'));
        assert.deepEqual(coalesce(r.extents('/triple.bin')), coalesce(st.extents));
        const data = r.readRange('/triple.bin', 70 * MiB, 65536 + 10);
        assert.ok(data.subarray(0, 65536).equals(Buffer.alloc(65536, 71)));
        assert.ok(data.subarray(65536).equals(Buffer.alloc(10)));
      });
    }

    if (c.opts.features?.includes('inline_data')) {
      it('reads inline-data files and directories', () => {
        const st = debugfs(img, ['stat /special/hello.txt'])[0]!;
        assert.match(st, /Flags: 0x10000000/, 'mke2fs should have stored the small file inline');
        assert.equal(r.readFile('/special/hello.txt').toString(), 'hello, world\n');
        assert.deepEqual(r.extents('/special/hello.txt'), []);
      });
    }
  });
}

describe('unwritten (preallocated) extents', () => {
  it('reads as zeros and is flagged uninit, as debugfs shows', () => {
    const dir = tempDir('ibu-ext4-uninit');
    try {
      const t = path.join(dir, 't');
      fs.mkdirSync(t);
      makeTree(t, {
        'data.bin': Buffer.alloc(8192, 0xab),
        'prealloc.bin': { type: 'sparse', size: 65536, chunks: [{ offset: 0, data: Buffer.alloc(4096, 1) }] },
      });
      const img = mkfs(t, path.join(dir, 'u.img'), { size: 16 * MiB, blockSize: 4096 });
      debugfs(img, ['fallocate /prealloc.bin 4 15'], true);
      const st = parseStatBlocks(debugfs(img, ['stat /prealloc.bin'])[0]!);
      assert.ok(
        st.extents.some((e) => e.uninit),
        'debugfs fallocate should have made an unwritten extent',
      );
      const r = Ext4Reader.open(img);
      try {
        assert.deepEqual(coalesce(r.extents('/prealloc.bin')), coalesce(st.extents));
        const data = r.readFile('/prealloc.bin');
        assert.ok(data.subarray(0, 4096).equals(Buffer.alloc(4096, 1)));
        assert.ok(data.subarray(4096).equals(Buffer.alloc(65536 - 4096)));
      } finally {
        r.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
