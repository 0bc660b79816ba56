import type { PhysicalExtent } from './types.js';
import type { BlockDevice } from './source.js';
import { invalid } from './errors.js';

export const EXTENT_MAGIC = 0xf30a;
const MAX_DEPTH = 5; // ext4 never builds deeper trees
const INIT_MAX_LEN = 32768; // ee_len above this marks an unwritten extent

/**
 * Walks an inode's extent tree (any depth) and returns its leaf extents in logical order.
 * Every node is checked (magic, counts, depth decreasing by one per level, blocks inside the
 * filesystem) and logical blocks must strictly increase, which also stops a corrupt tree
 * that points back at its own nodes from being walked twice.
 */
export function extentMap(dev: BlockDevice, iblock: Buffer, ino: number): PhysicalExtent[] {
  const out: PhysicalExtent[] = [];
  const state = { next: 0, nodes: 0 };
  walkNode(dev, iblock, undefined, ino, out, state);
  return out;
}

function walkNode(
  dev: BlockDevice,
  node: Buffer,
  expectedDepth: number | undefined,
  ino: number,
  out: PhysicalExtent[],
  state: { next: number; nodes: number },
): void {
  const where = `the extent tree of inode ${ino}`;
  if (node.readUInt16LE(0) !== EXTENT_MAGIC) throw invalid(`${where} has a node without the extent magic 0xF30A; the image is corrupt.`);
  const entries = node.readUInt16LE(2);
  const max = node.readUInt16LE(4);
  const depth = node.readUInt16LE(6);
  const capacity = Math.floor((node.length - 12) / 12);
  if (max > capacity || entries > max) throw invalid(`${where} has a node claiming ${entries} of ${max} entries where ${capacity} fit; the image is corrupt.`);
  if (depth > MAX_DEPTH) throw invalid(`${where} claims depth ${depth} (at most ${MAX_DEPTH} is possible); the image is corrupt.`);
  if (expectedDepth !== undefined && depth !== expectedDepth)
    throw invalid(`${where} has a node at depth ${depth} where ${expectedDepth} was expected; the image is corrupt.`);
  if (++state.nodes > dev.blocksCount) throw invalid(`${where} has more nodes than the filesystem has blocks; the image is corrupt.`);

  for (let i = 0; i < entries; i++) {
    const e = 12 + i * 12;
    const logical = node.readUInt32LE(e);
    if (depth === 0) {
      const rawLen = node.readUInt16LE(e + 4);
      const physical = node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8);
      const uninit = rawLen > INIT_MAX_LEN;
      const length = uninit ? rawLen - INIT_MAX_LEN : rawLen;
      if (length === 0) throw invalid(`${where} has an empty extent at logical block ${logical}; the image is corrupt.`);
      if (logical < state.next) throw invalid(`${where} has overlapping or unsorted extents at logical block ${logical}; the image is corrupt.`);
      if (physical < 1 || physical + length > dev.blocksCount) {
        throw invalid(
          `${where} maps logical block ${logical} to blocks ${physical}..${physical + length - 1}, ` +
            `outside the filesystem of ${dev.blocksCount} blocks; the image is corrupt.`,
        );
      }
      state.next = logical + length;
      out.push({ logical, physical, length, uninit });
    } else {
      const child = node.readUInt16LE(e + 8) * 2 ** 32 + node.readUInt32LE(e + 4);
      if (child < 1 || child >= dev.blocksCount) throw invalid(`${where} points at extent node block ${child}, outside the filesystem; the image is corrupt.`);
      if (logical < state.next && out.length > 0) throw invalid(`${where} has unsorted index entries at logical block ${logical}; the image is corrupt.`);
      walkNode(dev, dev.block(child, where), depth - 1, ino, out, state);
    }
  }
}

/** The depth of an inode's extent tree (0 when all extents fit in the inode). */
export function extentDepth(iblock: Buffer): number {
  return iblock.readUInt16LE(0) === EXTENT_MAGIC ? iblock.readUInt16LE(6) : 0;
}
