/**
 * The public shape of the read-only ext4 reader (src/image/ext4/). Other modules (release file
 * maps, deltas, image diff) code against these types only.
 */
export type Ext4FileType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket' | 'unknown';

/** A run of blocks of a file: logical block `logical` .. +length maps to physical block `physical` .. +length. */
export interface PhysicalExtent {
  logical: number; // in filesystem blocks, from the start of the file
  physical: number; // in filesystem blocks, from the start of the image
  length: number; // in blocks
  uninit: boolean; // unwritten (preallocated) extent: reads as zeros
}

export interface Ext4Entry {
  path: string; // absolute inside the image, '/' for the root, no trailing slash
  ino: number;
  type: Ext4FileType;
  mode: number; // permission bits incl. setuid/setgid/sticky (no type bits)
  uid: number;
  gid: number;
  size: number; // bytes (i_size; for symlinks the target length)
  mtime: number; // seconds since the epoch
  nlink: number;
  target?: string; // symlink target
  rdev?: { major: number; minor: number }; // device nodes
}

export interface Ext4Superblock {
  blockSize: number;
  blocksCount: number;
  inodesCount: number;
  freeBlocksCount: number;
  inodeSize: number;
  inodesPerGroup: number;
  blocksPerGroup: number;
  uuid: string; // 8-4-4-4-12 hex
  volumeName: string;
  featureCompat: number;
  featureIncompat: number;
  featureRoCompat: number;
  is64bit: boolean;
}
