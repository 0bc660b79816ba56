/**
 * Group descriptor placement held against dumpe2fs for every group: classic contiguous
 * tables with 32- and 64-byte descriptors, and meta_bg, where each meta group keeps its own
 * descriptor block (several descriptor blocks are needed with 1 KiB blocks and 300 MiB).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FileSource, BlockDevice } from '../../src/image/ext4/source.js';
import { parseSuperblock } from '../../src/image/ext4/superblock.js';
import { GroupDescriptors } from '../../src/image/ext4/group-descriptors.js';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { makeTree, mkfs, tempDir } from '../helpers/ext4-images.js';

const work = tempDir('ibu-ext4-groups');
after(() => fs.rmSync(work, { recursive: true, force: true }));

describe('ext4 group descriptors', () => {
  const t = path.join(work, 't');
  fs.mkdirSync(t);
  makeTree(t, { 'a.txt': 'a\n', d: { type: 'dir', children: { b: 'b\n' } } });

  for (const [name, features] of [
    ['32-byte descriptors', ['^64bit']],
    ['64-byte descriptors', ['64bit']],
    ['meta_bg, 32-byte', ['^64bit', 'meta_bg', '^resize_inode']],
    ['meta_bg, 64-byte', ['64bit', 'meta_bg', '^resize_inode']],
  ] as const) {
    it(`finds every group's inode table like dumpe2fs (${name})`, () => {
      const img = mkfs(t, path.join(work, `${name.replace(/\W+/g, '-')}.img`), { size: 300 * 1024 * 1024, blockSize: 1024, features: [...features] });
      const dump = execFileSync('dumpe2fs', [img], { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 28 }).toString();
      const tables = [...dump.matchAll(/^Group (\d+):[\s\S]*?Inode table at (\d+)-/gm)].map((m) => [Number(m[1]), Number(m[2])]);
      const src = new FileSource(img);
      try {
        const head = Buffer.alloc(1024);
        src.read(head, 1024);
        const sb = parseSuperblock(head, src.size, img);
        assert.equal(tables.length, sb.groupCount);
        assert.ok(sb.groupCount > 32, 'needs more than one descriptor block');
        const groups = new GroupDescriptors(new BlockDevice(src, sb.blockSize, sb.blocksCount), sb);
        for (const [g, table] of tables) assert.equal(groups.inodeTable(g!), table, `group ${g}`);
      } finally {
        src.close();
      }
      const r = Ext4Reader.open(img);
      try {
        assert.equal(r.readFile('/d/b').toString(), 'b\n');
      } finally {
        r.close();
      }
    });
  }
});
