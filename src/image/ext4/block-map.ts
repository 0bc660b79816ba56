import type { PhysicalExtent } from './types.js';
import type { BlockDevice } from './source.js';
import { invalid } from './errors.js';

const DIRECT = 12;

/**
 * Maps an ext2/ext3-style inode (12 direct pointers, then single, double and triple indirect
 * blocks) to runs of physical blocks. Zero pointers are holes. Only the first `nBlocks`
 * logical blocks (the file size) are mapped, and the number of blocks visited is capped by the
 * filesystem size so a corrupt map cannot make the walk run away.
 */
export function blockMap(dev: BlockDevice, iblock: Buffer, nBlocks: number, ino: number): PhysicalExtent[] {
  const out: PhysicalExtent[] = [];
  const where = `the block map of inode ${ino}`;
  const per = dev.blockSize / 4;
  let visited = 0;

  const push = (logical: number, physical: number): void => {
    if (physical >= dev.blocksCount) {
      throw invalid(`${where} maps logical block ${logical} to block ${physical}, outside the filesystem of ${dev.blocksCount} blocks; the image is corrupt.`);
    }
    if (++visited > dev.blocksCount) throw invalid(`${where} maps more blocks than the filesystem has; the image is corrupt.`);
    const last = out[out.length - 1];
    if (last && last.logical + last.length === logical && last.physical + last.length === physical) last.length++;
    else out.push({ logical, physical, length: 1, uninit: false });
  };

  const walk = (ptr: number, level: number, start: number): void => {
    if (ptr === 0 || start >= nBlocks) return;
    if (++visited > dev.blocksCount) throw invalid(`${where} visits more blocks than the filesystem has; the image is corrupt.`);
    const block = dev.block(ptr, where);
    const span = per ** (level - 1);
    for (let i = 0; i < per; i++) {
      const logical = start + i * span;
      if (logical >= nBlocks) break;
      const child = block.readUInt32LE(i * 4);
      if (child === 0) continue;
      if (level === 1) push(logical, child);
      else walk(child, level - 1, logical);
    }
  };

  for (let i = 0; i < DIRECT && i < nBlocks; i++) {
    const p = iblock.readUInt32LE(i * 4);
    if (p !== 0) push(i, p);
  }
  walk(iblock.readUInt32LE(48), 1, DIRECT);
  walk(iblock.readUInt32LE(52), 2, DIRECT + per);
  walk(iblock.readUInt32LE(56), 3, DIRECT + per + per * per);
  return out;
}

/** The largest file size (in blocks) a block map can address. */
export function blockMapMaxBlocks(blockSize: number): number {
  const per = blockSize / 4;
  return DIRECT + per + per ** 2 + per ** 3;
}
