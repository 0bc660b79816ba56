import type { Ext4Superblock } from './types.js';
import { invalid } from './errors.js';

export const SUPERBLOCK_OFFSET = 1024;
export const EXT4_MAGIC = 0xef53;

export const INCOMPAT = {
  COMPRESSION: 0x1,
  FILETYPE: 0x2,
  RECOVER: 0x4,
  JOURNAL_DEV: 0x8,
  META_BG: 0x10,
  EXTENTS: 0x40,
  BIT64: 0x80,
  MMP: 0x100,
  FLEX_BG: 0x200,
  EA_INODE: 0x400,
  DIRDATA: 0x1000,
  CSUM_SEED: 0x2000,
  LARGEDIR: 0x4000,
  INLINE_DATA: 0x8000,
  ENCRYPT: 0x10000,
  CASEFOLD: 0x20000,
} as const;

export const RO_COMPAT = {
  SPARSE_SUPER: 0x1,
  LARGE_FILE: 0x2,
  HUGE_FILE: 0x8,
  GDT_CSUM: 0x10,
  DIR_NLINK: 0x20,
  EXTRA_ISIZE: 0x40,
  BIGALLOC: 0x200,
  METADATA_CSUM: 0x400,
} as const;

// Everything a reader needs to follow the layout; the rest (journal, checksums, quota) does not
// change where file data lives.
const UNSUPPORTED_INCOMPAT: Array<[number, string]> = [
  [INCOMPAT.COMPRESSION, 'compression'],
  [INCOMPAT.JOURNAL_DEV, 'journal_dev (this is an external journal, not a filesystem)'],
  [INCOMPAT.DIRDATA, 'dirdata'],
];
const KNOWN_INCOMPAT = Object.values(INCOMPAT).reduce((a, b) => a | b, 0);

/** The superblock fields the reader uses, on top of the public Ext4Superblock. */
export interface Superblock extends Ext4Superblock {
  firstDataBlock: number;
  groupCount: number;
  descSize: number;
  firstMetaBg: number;
  firstIno: number;
  revLevel: number;
  hasFiletype: boolean;
  sparseSuper: boolean;
  metaBg: boolean;
}

export function parseSuperblock(buf: Buffer, imageSize: number, name: string): Superblock {
  if (buf.length < 1024) throw invalid(`${name} is ${imageSize} bytes, too small to hold an ext4 superblock; it is not an ext4 image.`);
  const magic = buf.readUInt16LE(0x38);
  if (magic !== EXT4_MAGIC) {
    throw invalid(
      `${name} is not an ext4 filesystem: no superblock magic 0xEF53 at byte 1080 (found 0x${magic.toString(16).padStart(4, '0')}). ` +
        `Pass an image made by mke2fs or 'ibu image build'.`,
    );
  }
  const logBlock = buf.readUInt32LE(0x18);
  if (logBlock > 6)
    throw invalid(`${name}: the superblock gives a block size of 2^${10 + logBlock} bytes (at most 64 KiB is valid); the superblock is corrupt.`);
  const blockSize = 1024 << logBlock;
  const incompat = buf.readUInt32LE(0x60);
  const roCompat = buf.readUInt32LE(0x64);
  const is64bit = (incompat & INCOMPAT.BIT64) !== 0;
  const blocksCount = buf.readUInt32LE(0x04) + (is64bit ? buf.readUInt32LE(0x150) * 2 ** 32 : 0);
  const freeBlocksCount = buf.readUInt32LE(0x0c) + (is64bit ? buf.readUInt32LE(0x158) * 2 ** 32 : 0);
  const inodesCount = buf.readUInt32LE(0x00);
  const firstDataBlock = buf.readUInt32LE(0x14);
  const blocksPerGroup = buf.readUInt32LE(0x20);
  const inodesPerGroup = buf.readUInt32LE(0x28);
  const revLevel = buf.readUInt32LE(0x4c);
  const inodeSize = revLevel === 0 ? 128 : buf.readUInt16LE(0x58);
  const firstIno = revLevel === 0 ? 11 : buf.readUInt32LE(0x54);
  const rawDescSize = buf.readUInt16LE(0xfe);
  const descSize = is64bit ? rawDescSize : 32;
  const firstMetaBg = buf.readUInt32LE(0x104);

  const bad = (what: string) => invalid(`${name}: ${what}; the superblock is corrupt.`);
  if (firstDataBlock > 1) throw bad(`first data block ${firstDataBlock} is impossible`);
  if (blocksPerGroup === 0 || blocksPerGroup > blockSize * 8) throw bad(`${blocksPerGroup} blocks per group is impossible with ${blockSize}-byte blocks`);
  if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) throw bad(`${inodesPerGroup} inodes per group is impossible with ${blockSize}-byte blocks`);
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0)
    throw bad(`inode size ${inodeSize} is not a power of two between 128 and the block size`);
  if (is64bit && (descSize < 64 || descSize > blockSize || (descSize & (descSize - 1)) !== 0))
    throw bad(`group descriptor size ${descSize} is invalid for a 64bit filesystem`);
  if (blocksCount <= firstDataBlock) throw bad(`the filesystem has ${blocksCount} blocks`);
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  if (inodesCount === 0 || inodesCount > groupCount * inodesPerGroup) throw bad(`${inodesCount} inodes do not fit ${groupCount} groups of ${inodesPerGroup}`);
  if (firstIno < 3 || firstIno > inodesCount) throw bad(`first non-reserved inode ${firstIno} is out of range`);
  if (blocksCount * blockSize > imageSize) {
    throw invalid(
      `${name} is ${imageSize} bytes but its superblock describes ${blocksCount} blocks of ${blockSize} bytes ` +
        `(${blocksCount * blockSize} bytes); the image is truncated.`,
    );
  }
  for (const [bit, feature] of UNSUPPORTED_INCOMPAT) {
    if (incompat & bit) throw invalid(`${name} uses the ext4 feature '${feature}', which the reader does not support.`);
  }
  const unknown = incompat & ~KNOWN_INCOMPAT;
  if (unknown) throw invalid(`${name} uses unknown incompatible ext4 features 0x${unknown.toString(16)}; the reader cannot follow its layout.`);

  return {
    blockSize,
    blocksCount,
    inodesCount,
    freeBlocksCount,
    inodeSize,
    inodesPerGroup,
    blocksPerGroup,
    uuid: formatUuid(buf.subarray(0x68, 0x78)),
    volumeName: cString(buf.subarray(0x78, 0x88)),
    featureCompat: buf.readUInt32LE(0x5c),
    featureIncompat: incompat,
    featureRoCompat: roCompat,
    is64bit,
    firstDataBlock,
    groupCount,
    descSize,
    firstMetaBg,
    firstIno,
    revLevel,
    hasFiletype: (incompat & INCOMPAT.FILETYPE) !== 0,
    sparseSuper: (roCompat & RO_COMPAT.SPARSE_SUPER) !== 0,
    metaBg: (incompat & INCOMPAT.META_BG) !== 0,
  };
}

/** The public view: only the fields of Ext4Superblock. */
export function publicSuperblock(sb: Superblock): Ext4Superblock {
  return {
    blockSize: sb.blockSize,
    blocksCount: sb.blocksCount,
    inodesCount: sb.inodesCount,
    freeBlocksCount: sb.freeBlocksCount,
    inodeSize: sb.inodeSize,
    inodesPerGroup: sb.inodesPerGroup,
    blocksPerGroup: sb.blocksPerGroup,
    uuid: sb.uuid,
    volumeName: sb.volumeName,
    featureCompat: sb.featureCompat,
    featureIncompat: sb.featureIncompat,
    featureRoCompat: sb.featureRoCompat,
    is64bit: sb.is64bit,
  };
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function cString(b: Buffer): string {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
}
