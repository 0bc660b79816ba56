import type { BlockDevice } from './source.js';
import type { Superblock } from './superblock.js';

/**
 * Where each block group keeps its inode table: all the reader needs from the group
 * descriptors. Handles 32-byte (classic) and 64-byte (64bit feature) descriptors, the
 * contiguous table after the superblock, and meta_bg's per-meta-group placement.
 */
export class GroupDescriptors {
  private readonly inodeTables: Float64Array;

  constructor(dev: BlockDevice, sb: Superblock) {
    this.inodeTables = new Float64Array(sb.groupCount);
    const perBlock = Math.floor(sb.blockSize / sb.descSize);
    const descBlocks = Math.ceil(sb.groupCount / perBlock);
    for (let i = 0; i < descBlocks; i++) {
      const where = descriptorBlock(sb, i, perBlock);
      const block = dev.block(where, `group descriptor block ${i}`);
      for (let j = 0; j < perBlock; j++) {
        const g = i * perBlock + j;
        if (g >= sb.groupCount) break;
        const off = j * sb.descSize;
        let table = block.readUInt32LE(off + 0x08);
        if (sb.is64bit) table += block.readUInt32LE(off + 0x28) * 2 ** 32;
        this.inodeTables[g] = table;
      }
    }
  }

  inodeTable(group: number): number {
    return this.inodeTables[group]!;
  }
}

function descriptorBlock(sb: Superblock, index: number, perBlock: number): number {
  // With 1 KiB blocks the superblock is block 1; otherwise it sits inside block 0.
  const superBlock = sb.blockSize === 1024 ? 1 : 0;
  if (!sb.metaBg || index < sb.firstMetaBg) return superBlock + 1 + index;
  const firstGroup = index * perBlock;
  const groupStart = sb.firstDataBlock + firstGroup * sb.blocksPerGroup;
  return groupStart + (groupHasSuper(sb, firstGroup) ? 1 : 0) + (sb.firstDataBlock === 0 && sb.blockSize === 1024 && firstGroup === 0 ? 1 : 0);
}

function groupHasSuper(sb: Superblock, g: number): boolean {
  if (!sb.sparseSuper || g <= 1) return true;
  if (g % 2 === 0) return false;
  return isPower(g, 3) || isPower(g, 5) || isPower(g, 7);
}

function isPower(n: number, base: number): boolean {
  let x = base;
  while (x < n) x *= base;
  return x === n;
}
