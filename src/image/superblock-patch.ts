import { promises as fsp } from 'node:fs';
import { run } from '../util/exec.js';

const SB_OFFSET = 1024;
const LAST_MOUNTED = 0x88; // s_last_mounted, char[64]
const CHECKSUM = 0x3fc; // s_checksum, le32 crc32c of the bytes before it
const RO_COMPAT = 0x64;
const RO_COMPAT_METADATA_CSUM = 0x400;

/**
 * Zeroes s_last_mounted in the primary superblock. The kernel records the mount point path
 * there (a random temp dir during a --previous build); debugfs can only shorten the string,
 * not clear the bytes after its NUL, so the superblock is patched here and its checksum
 * recomputed the way e2fsprogs does (crc32c seeded with ~0, no final inversion).
 */
export async function clearLastMounted(file: string): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    const sb = Buffer.alloc(1024);
    await fh.read(sb, 0, 1024, SB_OFFSET);
    sb.fill(0, LAST_MOUNTED, LAST_MOUNTED + 64);
    if (sb.readUInt32LE(RO_COMPAT) & RO_COMPAT_METADATA_CSUM) {
      sb.writeUInt32LE(crc32c(0xffffffff, sb.subarray(0, CHECKSUM)), CHECKSUM);
    }
    await fh.write(sb, 0, 1024, SB_OFFSET);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const BLOCK_GROUP_NR = 0x5a; // s_block_group_nr, le16: which group a backup copy sits in

/**
 * Makes every backup superblock a copy of the primary (with its group number), as mke2fs
 * leaves them. tune2fs writes the backups with its own clock and the mount history it saw;
 * debugfs later pins only the primary.
 * `backups` maps group number to the block where that group's backup superblock starts.
 */
export async function syncBackupSuperblocks(file: string, blockSize: number, backups: Map<number, number>): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    const primary = Buffer.alloc(1024);
    await fh.read(primary, 0, 1024, SB_OFFSET);
    const csum = (primary.readUInt32LE(RO_COMPAT) & RO_COMPAT_METADATA_CSUM) !== 0;
    for (const [group, block] of backups) {
      const sb = Buffer.from(primary);
      sb.writeUInt16LE(group & 0xffff, BLOCK_GROUP_NR);
      if (csum) sb.writeUInt32LE(crc32c(0xffffffff, sb.subarray(0, CHECKSUM)), CHECKSUM);
      await fh.write(sb, 0, 1024, block * blockSize);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Group number → block of each backup superblock, from dumpe2fs. */
export async function backupSuperblocks(file: string): Promise<Map<number, number>> {
  const res = await run('dumpe2fs', [file], { env: { ...process.env, LC_ALL: 'C' } });
  const out = new Map<number, number>();
  let group = -1;
  for (const line of res.stdout.split('\n')) {
    const g = /^Group (\d+):/.exec(line);
    if (g) group = Number(g[1]);
    const b = /Backup superblock at (\d+)/.exec(line);
    if (b && group >= 0) out.set(group, Number(b[1]));
  }
  return out;
}

let table: Uint32Array | undefined;

/** CRC-32C (Castagnoli), reflected, as e2fsprogs' ext2fs_crc32c_le: no final xor. */
export function crc32c(seed: number, data: Uint8Array): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      table[i] = c >>> 0;
    }
  }
  let crc = seed >>> 0;
  for (let i = 0; i < data.length; i++) crc = (table[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8)) >>> 0;
  return crc >>> 0;
}
