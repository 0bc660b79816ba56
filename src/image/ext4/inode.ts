import type { Ext4FileType } from './types.js';
import type { BlockDevice } from './source.js';
import type { Superblock } from './superblock.js';
import type { GroupDescriptors } from './group-descriptors.js';
import { invalid } from './errors.js';

export const ROOT_INO = 2;

export const INODE_FLAG = {
  INDEX: 0x1000, // hashed-indexed (htree) directory
  HUGE_FILE: 0x40000,
  EXTENTS: 0x80000,
  EA_INODE: 0x200000,
  INLINE_DATA: 0x10000000,
} as const;

/** The fields of one on-disk inode that the reader uses. */
export interface Inode {
  ino: number;
  mode: number; // full i_mode, type bits included
  type: Ext4FileType;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  links: number;
  flags: number;
  /** i_block: the extent root, block map, fast symlink target or inline data (60 bytes). */
  iblock: Buffer;
  /** The in-inode extended attribute area (after i_extra_isize), empty without one. */
  xattrArea: Buffer;
}

const TYPES: Record<number, Ext4FileType> = {
  0x1000: 'fifo',
  0x2000: 'chardev',
  0x4000: 'dir',
  0x6000: 'blockdev',
  0x8000: 'file',
  0xa000: 'symlink',
  0xc000: 'socket',
};

export function fileTypeOf(mode: number): Ext4FileType {
  return TYPES[mode & 0xf000] ?? 'unknown';
}

export function readInode(dev: BlockDevice, sb: Superblock, groups: GroupDescriptors, ino: number): Inode {
  if (!Number.isInteger(ino) || ino < 1 || ino > sb.inodesCount) {
    throw invalid(`Inode ${ino} is out of range (the filesystem has ${sb.inodesCount} inodes); the image is corrupt.`);
  }
  const group = Math.floor((ino - 1) / sb.inodesPerGroup);
  const offset = ((ino - 1) % sb.inodesPerGroup) * sb.inodeSize;
  const blockNo = groups.inodeTable(group) + Math.floor(offset / sb.blockSize);
  const block = dev.block(blockNo, `the inode table of group ${group} (inode ${ino})`);
  const at = offset % sb.blockSize;
  const raw = block.subarray(at, at + sb.inodeSize);

  const mode = raw.readUInt16LE(0x00);
  const size = raw.readUInt32LE(0x04) + raw.readUInt32LE(0x6c) * 2 ** 32;
  // No mapping can reach past 2^32 blocks; a larger i_size is corruption (and not a safe integer).
  if (size > 2 ** 32 * sb.blockSize) throw invalid(`Inode ${ino} claims a size of ${size} bytes, more than any ext4 file can hold; the image is corrupt.`);
  let mtime = raw.readInt32LE(0x10);
  let xattrArea: Buffer = Buffer.alloc(0);
  if (sb.inodeSize > 128) {
    const extra = raw.readUInt16LE(0x80);
    if (extra >= 4 && 128 + extra <= sb.inodeSize && extra % 4 === 0) {
      // i_mtime_extra's low two bits extend the 32-bit seconds past 2038.
      if (extra >= 12) mtime += (raw.readUInt32LE(0x88) & 3) * 2 ** 32;
      xattrArea = Buffer.from(raw.subarray(128 + extra));
    }
  }
  return {
    ino,
    mode,
    type: fileTypeOf(mode),
    uid: raw.readUInt16LE(0x02) + raw.readUInt16LE(0x78) * 65536,
    gid: raw.readUInt16LE(0x18) + raw.readUInt16LE(0x7a) * 65536,
    size,
    mtime,
    links: raw.readUInt16LE(0x1a),
    flags: raw.readUInt32LE(0x20),
    iblock: Buffer.from(raw.subarray(0x28, 0x28 + 60)),
    xattrArea,
  };
}
