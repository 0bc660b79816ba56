/**
 * Generated file trees for ext4 tests: thousands of files in nested directories, one
 * directory large enough to become an htree, and every awkward kind of entry.
 */
import { seededBytes, type TreeSpec } from './ext4-images.js';

export interface StandardTreeOptions {
  /** Files in /many (a flat directory; more than ~1000 makes an htree with 1 KiB blocks). */
  manyFiles?: number;
  /** Nested directories /nested/dNN/eNN with `perDir` files each. */
  nestedDirs?: number;
  perDir?: number;
  /** Files of assorted sizes (0 .. 200 KiB) under /sizes. */
  sizedFiles?: number;
  /** Add a fragmented sparse file (a 1 KiB piece every 2 KiB over 1 MiB): hundreds of extents. */
  fragmented?: boolean;
  /** Add a FIFO (needs no privilege). */
  fifo?: boolean;
  /** Add device nodes (needs root: mknod). */
  devices?: boolean;
  /** Add the sparse files (default true). */
  sparse?: boolean;
}

const LONG_TARGET = '/usr/lib/x86_64-linux-gnu/some-very-long-directory-name/and-another-one/and-the-target-file.so.1.2.3';

export function standardTree(o: StandardTreeOptions = {}): TreeSpec {
  const many: TreeSpec = {};
  for (let i = 0; i < (o.manyFiles ?? 1500); i++) many[`entry-with-a-longer-name-${String(i).padStart(5, '0')}.conf`] = `line ${i}\n`;

  const nested: TreeSpec = {};
  const dirs = o.nestedDirs ?? 10;
  for (let d = 0; d < dirs; d++) {
    const sub: TreeSpec = {};
    for (let e = 0; e < dirs; e++) {
      const files: TreeSpec = {};
      for (let f = 0; f < (o.perDir ?? 13); f++) files[`f${f}.txt`] = `d${d} e${e} f${f}\n`.repeat(f * 7 + 1);
      sub[`e${String(e).padStart(2, '0')}`] = { type: 'dir', children: files };
    }
    nested[`d${String(d).padStart(2, '0')}`] = { type: 'dir', children: sub };
  }

  const sizes: TreeSpec = {};
  for (let i = 0; i < (o.sizedFiles ?? 200); i++) {
    // Sizes around block boundaries and well past the 12 direct blocks of a block map.
    const size = [0, 1, 1023, 1024, 1025, 4095, 4096, 4097, 12288, 13313][i % 10]! + (i >= 10 ? (i * 997) % 200_000 : 0);
    sizes[`s${String(i).padStart(4, '0')}.bin`] = seededBytes(size, i + 1);
  }

  const spec: TreeSpec = {
    many: { type: 'dir', children: many },
    nested: { type: 'dir', children: nested },
    sizes: { type: 'dir', children: sizes },
    special: {
      type: 'dir',
      children: {
        empty: '',
        'one-byte': 'x',
        'hello.txt': 'hello, world\n',
        'script.sh': { type: 'file', content: '#!/bin/sh\necho hi\n', mode: 0o4755 },
        'sparse.img': {
          type: 'sparse',
          size: 5 * 1024 * 1024 + 123,
          chunks: [
            { offset: 1024 * 1024, data: seededBytes(10_000, 77) },
            { offset: 3 * 1024 * 1024 + 5, data: seededBytes(4096, 78) },
          ],
        },
        'all-hole': { type: 'sparse', size: 3 * 1024 * 1024, chunks: [] },
        'short-link': { type: 'symlink', target: 'hello.txt' },
        'long-link': { type: 'symlink', target: LONG_TARGET },
        'dir-link': { type: 'symlink', target: '../nested/d01' },
        'abs-link': { type: 'symlink', target: '/special/hello.txt' },
        dangling: { type: 'symlink', target: '/does/not/exist' },
        'hard-a': 'shared by three names\n',
        'hard-b': { type: 'hardlink', to: 'special/hard-a' },
        'Grüße aus Köln.txt': 'ü\n',
        日本語のファイル名: 'nihongo\n',
        'emoji-😀.txt': 'smile\n',
        'with space': { type: 'dir', children: { 'inner file': 'inner\n' } },
        'name-x': 'sorts before name/',
        name: { type: 'dir', children: { a: 'a\n' } },
        private: { type: 'dir', mode: 0o700, children: { secret: { type: 'file', content: 's', mode: 0o600 } } },
      },
    },
    'hard-c': { type: 'hardlink', to: 'special/hard-a' },
  };
  if (o.fragmented) {
    const chunks = [];
    for (let off = 0; off < 1024 * 1024; off += 2048) chunks.push({ offset: off, data: seededBytes(1024, off + 9) });
    (spec.special as { children: TreeSpec }).children['fragmented.bin'] = { type: 'sparse', size: 1024 * 1024, chunks };
  }
  if (o.sparse === false) {
    delete (spec.special as { children: TreeSpec }).children['sparse.img'];
    delete (spec.special as { children: TreeSpec }).children['all-hole'];
  }
  if (o.devices) {
    const children = (spec.special as { children: TreeSpec }).children;
    children['null'] = { type: 'chardev', major: 1, minor: 3 };
    children['nvme-part'] = { type: 'blockdev', major: 259, minor: 70000 }; // needs the new encoding
  }
  if (o.fifo) (spec.special as { children: TreeSpec }).children['pipe'] = { type: 'fifo' };
  return spec;
}
