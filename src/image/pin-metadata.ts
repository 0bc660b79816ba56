import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';

/**
 * Pins everything in an ext4 image that records when or how many times it was touched, so the
 * same content gives the same bytes:
 *  - every used inode: atime/ctime/mtime/crtime = epoch with zero nanoseconds, generation 0
 *    (the kernel picks it at random for new inodes), i_version 0;
 *  - the superblock: write/check time = epoch, never mounted, no mount path, no write counter.
 * ctime cannot be set from user space on the source tree, and `mke2fs -d` copies it, so this
 * pass is what makes even fresh builds reproducible. Checksums are recomputed by debugfs for
 * inodes; blocks whose checksums are seeded by the generation (directories, extent blocks) are
 * fixed by the e2fsck run that follows (see layout-stable.ts).
 */
export async function pinInodes(file: string, epoch: number): Promise<number> {
  const map = await inodeMap(file);
  const { used } = map;
  // Deleted inodes keep their old fields and a deletion time; a fresh image has zeros there.
  // debugfs clri would zero only the first 128 bytes and checksum the rest, so write zeros.
  await zeroInodes(file, map);
  const t = `@${epoch}`;
  const lines = [`set_current_time ${t}`];
  for (const ino of used) {
    for (const f of ['atime', 'ctime', 'mtime', 'crtime']) {
      lines.push(`sif <${ino}> ${f} ${t}`, `sif <${ino}> ${f}_extra 0`);
    }
    lines.push(`sif <${ino}> generation 0`, `sif <${ino}> version 0`, `sif <${ino}> version_hi 0`);
  }
  await debugfsScript(file, lines);
  return used.length;
}

/** Resets the superblock's mount and write history to what a fresh mke2fs at `epoch` writes. */
export async function pinSuperblock(file: string, epoch: number): Promise<void> {
  const t = `@${epoch}`;
  await debugfsScript(file, [`set_current_time ${t}`, 'ssv mtime 0', 'ssv mnt_count 0', 'ssv last_mounted ""', `ssv lastcheck ${t}`, 'ssv kbytes_written 0']);
}

async function debugfsScript(file: string, lines: string[]): Promise<void> {
  const res = await run('debugfs', ['-w', '-f', '-', file], { input: lines.join('\n') + '\n', env: { ...process.env, LC_ALL: 'C' } });
  // debugfs exits 0 even when a command fails; its complaints are on stderr after the banner.
  const errors = res.stderr.split('\n').filter((l) => l.trim() && !/^debugfs \d/.test(l) && !/^Setting current time/.test(l));
  if (errors.length > 0) {
    throw new IbuError('TOOL_FAILED', `debugfs could not pin the image metadata of ${file}: ${errors.slice(0, 5).join('; ')}`);
  }
}

/**
 * From the bitmaps: `used` = inodes 2, 7, 8 and every used inode from the first non-reserved
 * one on; `stale` = free inodes in the initialised part of each group's table (below its
 * unused tail), which may hold a deleted file's inode.
 */
export interface InodeMap {
  used: number[];
  stale: number[];
  inodesPerGroup: number;
  inodeSize: number;
  blockSize: number;
  /** First block of each group's inode table. */
  tables: Map<number, number>;
}

export async function inodeMap(file: string): Promise<InodeMap> {
  const res = await run('dumpe2fs', [file], { env: { ...process.env, LC_ALL: 'C' } });
  const text = res.stdout;
  const ipg = Number(/^Inodes per group:\s+(\d+)/m.exec(text)?.[1]);
  const firstIno = Number(/^First inode:\s+(\d+)/m.exec(text)?.[1] ?? 11);
  const inodeSize = Number(/^Inode size:\s+(\d+)/m.exec(text)?.[1] ?? 256);
  const blockSize = Number(/^Block size:\s+(\d+)/m.exec(text)?.[1] ?? 4096);
  const tables = new Map<number, number>();
  if (!ipg) throw new IbuError('IMAGE_INVALID', `dumpe2fs shows no inode geometry for ${file}.`);
  // Root, resize and journal inodes: the journal is re-created by tune2fs with the wall clock.
  const used: number[] = [2, 7, 8];
  const stale: number[] = [];
  let group = -1;
  let unused = 0;
  for (const line of text.split('\n')) {
    const g = /^Group (\d+):/.exec(line);
    if (g) {
      group = Number(g[1]);
      unused = 0;
      continue;
    }
    const it = /^\s+Inode table at (\d+)/.exec(line);
    if (it) tables.set(group, Number(it[1]));
    const u = /(\d+) unused inodes/.exec(line);
    if (u) unused = Number(u[1]);
    const m = /^\s+Free inodes:\s*(.*)$/.exec(line);
    if (!m || group < 0) continue;
    const lo = group * ipg + 1;
    const hi = (group + 1) * ipg;
    const free = new Uint8Array(ipg);
    for (const r of m[1]!
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const [a, b] = r.split('-').map(Number);
      for (let i = a!; i <= (b ?? a!); i++) free[i - lo] = 1;
    }
    for (let ino = Math.max(lo, firstIno); ino <= hi; ino++) {
      if (!free[ino - lo]) used.push(ino);
      else if (ino <= hi - unused) stale.push(ino);
    }
  }
  return { used, stale, inodesPerGroup: ipg, inodeSize, blockSize, tables };
}

async function zeroInodes(file: string, m: InodeMap): Promise<void> {
  if (m.stale.length === 0) return;
  const fh = await fsp.open(file, 'r+');
  try {
    const zero = Buffer.alloc(m.inodeSize);
    const slot = Buffer.alloc(m.inodeSize);
    for (const ino of m.stale) {
      const group = Math.floor((ino - 1) / m.inodesPerGroup);
      const table = m.tables.get(group);
      if (table === undefined) continue;
      const pos = table * m.blockSize + ((ino - 1) % m.inodesPerGroup) * m.inodeSize;
      await fh.read(slot, 0, m.inodeSize, pos);
      if (!slot.equals(zero)) await fh.write(zero, 0, m.inodeSize, pos);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}
