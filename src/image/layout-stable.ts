import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';
import { BLOCK_SIZE, superblockFields } from './mkfs.js';
import { IMAGE_INFO_PATH } from './tree-source.js';

export interface LayoutStableOptions {
  /** The previous release's image; only read. */
  previous: string;
  /** The output file being built (a `.partial`). */
  file: string;
  size: number;
  tree: string;
  infoJson: string;
  workDir: string;
  /** Phase timing hook (see build.ts). */
  timer?: (phase: string) => void;
}

export interface LayoutStableStats {
  /** Bytes rsync wrote into the image (changed and new files). */
  bytesWritten: number;
  /** Bytes fstrim returned to holes (deleted and rewritten files' old blocks). */
  bytesTrimmed: number;
}

/**
 * Builds the new image in a copy of the previous one, so that every file whose content did not
 * change keeps its physical blocks: deltas and chunk downloads then only carry what changed.
 * This is the proven way (used for years by appliance builders): sparse copy, loop mount,
 * `rsync --delete` the new tree in, fstrim, unmount, e2fsck. Needs root (mount).
 *  - `--checksum`: rsync decides "unchanged" by content, never by size+mtime, so an unchanged
 *    file is not rewritten and a changed file of the same size and time is not missed.
 *  - `--inplace --no-whole-file`: a changed file is patched in its own blocks; blocks whose
 *    content matches at the same offset are not written at all.
 *  - `nodelalloc` + one CPU (the first this process may use): blocks are allocated in rsync's
 *    write() on a fixed CPU, not later by a flusher thread on any CPU, so two runs allocate the
 *    same blocks (ext4 keeps per-CPU preallocations for small files).
 * The caller pins times, generations and the superblock afterwards (pin-metadata.ts).
 */
export async function updateFromPrevious(o: LayoutStableOptions): Promise<LayoutStableStats> {
  const timer = o.timer ?? ((): void => {});
  await run('cp', ['--sparse=always', o.previous, o.file]);
  const prevSize = (await fsp.stat(o.file)).size;
  // resize2fs wants a freshly checked filesystem, and a copy of an image that was not cleanly
  // made may need its journal replayed: check first.
  await fsckFix(o.file);
  if (prevSize !== o.size) await resize(o.file, prevSize, o.size);
  timer('copy previous+fsck');

  const mnt = path.join(o.workDir, 'mnt');
  await fsp.mkdir(mnt, { recursive: true });
  await run('mount', ['-t', 'ext4', '-o', 'loop,noatime,nodelalloc', o.file, mnt]);
  let stats: LayoutStableStats;
  try {
    const src = `${o.tree.replace(/\/+$/, '')}/`;
    const common = ['-aHAX', '--numeric-ids', '--exclude=/lost+found', `--exclude=${IMAGE_INFO_PATH}`];
    // Pass 1 only deletes. Freed blocks stay busy until the journal commits, so deleting and
    // writing in one pass would let commit timing decide where new data lands; a sync between
    // the passes makes every freed block available before the first write.
    await rsyncInto(['--delete', '--existing', '--ignore-existing', ...common, src, `${mnt}/`], o.size);
    await run('sync', ['-f', mnt]);
    timer('mount+rsync delete');
    // Pass 2 creates what is not a regular file (directories, symlinks, devices), pass 3 the
    // regular files. In one pass rsync's generator makes the former while its receiver, another
    // process, makes the files: which takes the next inode and directory block was a race, so two
    // builds of a tree with new directories (a new kernel's modules) gave different bytes.
    await rsyncInto(['--min-size=1P', ...common, src, `${mnt}/`], o.size);
    await run('sync', ['-f', mnt]);
    timer('rsync all but files');
    const rsync = await rsyncInto(['--checksum', '--inplace', '--no-whole-file', '--stats', ...common, src, `${mnt}/`], o.size);
    timer('rsync --checksum');
    // image.json goes in through the same pinned rsync: a write from Node's thread pool could
    // run on either CPU, and the CPU picks the allocator's per-CPU preallocation for small files.
    const info = path.join(o.workDir, 'image.json');
    await fsp.writeFile(info, o.infoJson, { mode: 0o644 });
    await run('taskset', ['-c', pinnedCpu(), 'mkdir', '-p', '-m', '755', path.join(mnt, path.dirname(IMAGE_INFO_PATH))]);
    await rsyncInto(
      ['--checksum', '--inplace', '--no-whole-file', '--chown=0:0', '--chmod=F644', '-p', '-o', '-g', info, path.join(mnt, IMAGE_INFO_PATH)],
      o.size,
    );
    // Freed blocks (deleted files, old journal content) go back to holes: zeros in the image,
    // nothing on the host disk. The loop driver turns discards into hole punches. Blocks freed
    // in a transaction not yet committed are skipped by FITRIM, hence the sync first.
    await run('sync', ['-f', mnt]);
    const trim = await run('fstrim', ['-v', mnt]);
    await run('sync', ['-f', mnt]);
    timer('fstrim');
    stats = {
      bytesWritten: Number(/Total transferred file size: ([\d,]+)/.exec(rsync.stdout)?.[1]?.replace(/,/g, '') ?? 0),
      bytesTrimmed: Number(/\((\d+) bytes\) trimmed/.exec(trim.stdout)?.[1] ?? 0),
    };
  } finally {
    await unmount(mnt);
  }
  timer('umount');
  await fsckFix(o.file);
  await resetJournal(o.file);
  timer('fsck+journal reset');
  return stats;
}

/** Unmounts, retrying briefly: a just-finished rsync can keep the mount busy for a moment. */
export async function unmount(mnt: string): Promise<void> {
  for (let i = 0; ; i++) {
    const r = await run('umount', [mnt], { allowFailure: true });
    if (r.code === 0) return;
    if (/not mounted/i.test(r.stderr)) return;
    if (i >= 20) throw new IbuError('TOOL_FAILED', `could not unmount ${mnt}: ${r.stderr.trim()}`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

/** The CPU every writer into the mount runs on: the first one this process may use. */
function pinnedCpu(): string {
  try {
    const m = /^Cpus_allowed_list:\s*(\d+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) return m[1]!;
  } catch {
    // not Linux procfs: fall through
  }
  return '0';
}

/** rsync pinned to one CPU (see above); a full image is IMAGE_TOO_SMALL. */
async function rsyncInto(args: string[], size: number): Promise<{ stdout: string }> {
  const r = await run('taskset', ['-c', pinnedCpu(), 'rsync', ...args], { env: { ...process.env, LC_ALL: 'C' }, allowFailure: true });
  if (r.code !== 0) {
    if (/No space left on device/i.test(r.stderr)) {
      throw new IbuError('IMAGE_TOO_SMALL', `the new tree does not fit into ${size} bytes on top of the previous image's layout: pass a larger --size.`);
    }
    throw new IbuError('TOOL_FAILED', `rsync into the previous image failed (exit ${r.code}): ${r.stderr.trim().slice(-2000)}`);
  }
  return r;
}

async function resize(file: string, from: number, to: number): Promise<void> {
  if (to > from) await fsp.truncate(file, to);
  const r = await run('resize2fs', [file, `${Math.floor(to / BLOCK_SIZE)}`], { allowFailure: true, env: { ...process.env, LC_ALL: 'C' } });
  if (r.code !== 0) {
    if (/No space left|too small|Invalid new size/i.test(r.stderr)) {
      throw new IbuError('IMAGE_TOO_SMALL', `the previous image cannot be shrunk to ${to} bytes: pass a larger --size.`);
    }
    throw new IbuError('TOOL_FAILED', `resize2fs failed: ${r.stderr.trim().slice(-2000)}`);
  }
  if (to < from) await fsp.truncate(file, to);
}

/**
 * `e2fsck -fy`: fixes what the mount and the metadata pinning leave behind (e.g. directory
 * checksums seeded by a generation number that was reset). Exit 0 or 1 is success.
 */
export async function fsckFix(file: string): Promise<void> {
  const r = await run('e2fsck', ['-fy', file], { allowFailure: true, env: { ...process.env, LC_ALL: 'C' } });
  if (r.code > 1) {
    throw new IbuError('IMAGE_FSCK_FAILED', `e2fsck could not repair ${file} (exit ${r.code}): ${r.stdout.trim().slice(-1500)}`);
  }
}

/** `e2fsck -fn` must find nothing: the gate every built image passes. */
export async function fsckCheck(file: string): Promise<void> {
  const r = await run('e2fsck', ['-fn', file], { allowFailure: true, env: { ...process.env, LC_ALL: 'C' } });
  if (r.code !== 0) {
    throw new IbuError('IMAGE_FSCK_FAILED', `the built image ${file} is not clean (e2fsck -fn exit ${r.code}): ${r.stdout.trim().slice(-1500)}`);
  }
}

/**
 * The mount wrote transactions (with commit times and random tags) into the journal. A clean
 * journal carries no information, so it is removed and created again empty, at the same size.
 */
async function resetJournal(file: string): Promise<void> {
  const sb = await superblockFields(file);
  const blocks = Number(/\d+/.exec(sb['Total journal blocks'] ?? '')?.[0] ?? 0);
  if (!blocks) return;
  const mb = Math.max(1, Math.round((blocks * BLOCK_SIZE) / (1024 * 1024)));
  const before = await journalBlocks(file);
  await run('tune2fs', ['-O', '^has_journal', file]);
  await run('tune2fs', ['-J', `size=${mb}`, file]);
  // The new journal need not land where the old one was (new files may have taken part of that
  // area); the old one's blocks are free then, but still hold the mount's transactions (commit
  // times, random tags): zero them, as fstrim zeroed every other free block.
  for (const r of subtractRanges(before, await journalBlocks(file))) await zeroBlocks(file, r);
}

/** A run of filesystem blocks, both ends included. */
export interface BlockRange {
  start: number;
  end: number;
}

/** The blocks an inode's `debugfs stat` lists under EXTENTS (data and extent-tree blocks). Pure. */
export function parseExtentBlocks(stat: string): BlockRange[] {
  const list = /EXTENTS:\n([\s\S]*)$/.exec(stat)?.[1] ?? '';
  const out: BlockRange[] = [];
  for (const m of list.matchAll(/\((?:\d+(?:-\d+)?|ETB\d+)\):(\d+)(?:-(\d+))?/g)) out.push({ start: Number(m[1]), end: Number(m[2] ?? m[1]) });
  return out.sort((a, b) => a.start - b.start);
}

/** The blocks in `a` that are in no range of `b`. Pure. */
export function subtractRanges(a: readonly BlockRange[], b: readonly BlockRange[]): BlockRange[] {
  let rest = a.map((r) => ({ ...r }));
  for (const cut of b) {
    rest = rest.flatMap((r) => {
      if (cut.end < r.start || cut.start > r.end) return [r];
      const parts: BlockRange[] = [];
      if (cut.start > r.start) parts.push({ start: r.start, end: cut.start - 1 });
      if (cut.end < r.end) parts.push({ start: cut.end + 1, end: r.end });
      return parts;
    });
  }
  return rest;
}

async function journalBlocks(file: string): Promise<BlockRange[]> {
  const r = await run('debugfs', ['-R', 'stat <8>', file], { env: { ...process.env, LC_ALL: 'C' } });
  return parseExtentBlocks(r.stdout);
}

/** Zeros free blocks: a hole punched in the image file, or zeros written where the host cannot punch. */
async function zeroBlocks(file: string, r: BlockRange): Promise<void> {
  const offset = r.start * BLOCK_SIZE;
  const length = (r.end - r.start + 1) * BLOCK_SIZE;
  const punched = await run('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(length), file], { allowFailure: true });
  if (punched.code === 0) return;
  const fd = await fsp.open(file, 'r+');
  try {
    const zeros = Buffer.alloc(Math.min(length, 1 << 20));
    for (let done = 0; done < length; done += zeros.length) await fd.write(zeros, 0, Math.min(zeros.length, length - done), offset + done);
    await fd.sync();
  } finally {
    await fd.close();
  }
}

/** The UUID of an existing image (to check it belongs to the same product). */
export async function imageUuid(file: string): Promise<string> {
  const sb = await superblockFields(file).catch((err: unknown) => {
    throw new IbuError('IMAGE_INVALID', `the previous image ${file} is not a readable ext4 image: pass an image made by ibu image build.`, { cause: err });
  });
  return sb['Filesystem UUID'] ?? '';
}
