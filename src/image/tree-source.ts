import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';

/** Where the image describes itself; written by the builder, never taken from the tree. */
export const IMAGE_INFO_PATH = '/etc/ibu/image.json';

const BLOCK = 4096;

/** What a scan of a root tree found: a content digest and what it needs in an ext4 image. */
export interface TreeScan {
  /** sha256 over every entry's path, type, mode, owner, size/target and content (times excluded). */
  digest: string;
  /** Number of distinct inodes (hard links counted once). */
  inodes: number;
  /** Estimated 4 KiB blocks for file data, directories and long symlinks. */
  dataBlocks: number;
  /** Bytes of regular-file content (hard links counted once). */
  apparentBytes: number;
}

/**
 * Extracts a root tarball into `dir` as root with numeric owners, permissions and xattrs, so
 * that what the image contains is what the tarball says, not who ran the build.
 */
export async function extractTar(tarFile: string, dir: string): Promise<void> {
  const st = await fsp.stat(tarFile).catch(() => null);
  if (!st || !st.isFile()) {
    throw new IbuError('IMAGE_SOURCE_MISSING', `the root tarball ${tarFile} does not exist or is not a file: pass an existing tar archive with --tar.`);
  }
  await fsp.mkdir(dir, { recursive: true });
  await run('tar', ['--numeric-owner', '--same-owner', '-p', '--xattrs', '--xattrs-include=*', '--acls', '-xf', tarFile, '-C', dir]);
}

export async function assertTreeDir(dir: string): Promise<void> {
  const st = await fsp.stat(dir).catch(() => null);
  if (!st || !st.isDirectory()) {
    throw new IbuError(
      'IMAGE_SOURCE_MISSING',
      `the root tree ${dir} does not exist or is not a directory: pass the root filesystem directory with --root (or a tarball with --tar).`,
    );
  }
}

/**
 * Walks the tree in byte order of names (the order `mke2fs -d` uses with LC_ALL=C) and hashes
 * it. Paths are handled as bytes so that names which are not UTF-8 survive. The image's own
 * IMAGE_INFO_PATH is left out: the builder writes it.
 */
export function scanTree(root: string): TreeScan {
  const h = createHash('sha256');
  const seen = new Set<string>();
  const buf = Buffer.allocUnsafe(1 << 20);
  const skip = Buffer.from(IMAGE_INFO_PATH);
  let inodes = 0;
  let dataBlocks = 0;
  let apparentBytes = 0;
  const rootBuf = Buffer.from(root);
  // Explicit stack instead of recursion: Debian trees are deep enough to matter for nothing,
  // but user trees may not be.
  const stack: Buffer[] = [Buffer.from('/')];
  while (stack.length > 0) {
    const rel = stack.pop()!;
    const abs = rel.length === 1 ? rootBuf : Buffer.concat([rootBuf, rel]);
    if (rel.equals(skip)) continue;
    const st = fs.lstatSync(abs, { bigint: false });
    const key = `${st.dev}:${st.ino}`;
    const first = !seen.has(key);
    if (first) {
      seen.add(key);
      inodes++;
    }
    h.update(rel).update('\0');
    h.update(`${st.mode.toString(8)} ${st.uid} ${st.gid} `);
    if (st.isDirectory()) {
      const names = fs.readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
      // A linear directory block holds 8-byte headers plus names padded to 4 bytes.
      let bytes = 24;
      for (const n of names) bytes += 8 + ((n.length + 3) & ~3);
      dataBlocks += Math.max(1, Math.ceil(bytes / BLOCK)) + (bytes > BLOCK ? 1 : 0);
      h.update(`dir ${names.length}\n`);
      for (let i = names.length - 1; i >= 0; i--) {
        stack.push(Buffer.concat([rel.length === 1 ? rel : Buffer.concat([rel, Buffer.from('/')]), names[i]!]));
      }
    } else if (st.isSymbolicLink()) {
      const target = fs.readlinkSync(abs, { encoding: 'buffer' });
      if (first && target.length >= 60) dataBlocks += 1; // fast symlinks live in the inode
      h.update('link ').update(target).update('\n');
    } else if (st.isFile()) {
      if (first) {
        // mke2fs -d keeps holes (and turns all-zero blocks into holes): a sparse file needs
        // only what it has allocated.
        dataBlocks += Math.min(Math.ceil(st.size / BLOCK), Math.ceil((st.blocks * 512) / BLOCK)) + extentOverhead(st.size);
        apparentBytes += st.size;
      }
      h.update(`file ${st.size} `).update(hashFile(abs, buf)).update('\n');
    } else {
      h.update(`special ${st.rdev}\n`);
    }
  }
  return { digest: `sha256:${h.digest('hex')}`, inodes, dataBlocks, apparentBytes };
}

/** Big files need extent tree blocks once they have more than 4 extents (128 MiB each at most). */
function extentOverhead(size: number): number {
  const extents = Math.ceil(size / (128 * 1024 * 1024));
  return extents > 4 ? Math.ceil(extents / 340) : 0;
}

function hashFile(file: Buffer, buf: Buffer): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/**
 * Resolves `p` (absolute, inside the image) to the regular file it names, following symlinks
 * the way the booted system would: absolute targets start at the tree's root, never the host's,
 * and `..` stops at the root. Returns the in-tree path of the final file, or null.
 */
export function resolveInTree(root: string, p: string): string | null {
  let parts = p.split('/').filter(Boolean);
  let done: string[] = [];
  let hops = 0;
  while (parts.length > 0) {
    const part = parts.shift()!;
    if (part === '.') continue;
    if (part === '..') {
      done.pop();
      continue;
    }
    const cur = [...done, part];
    const abs = path.join(root, ...cur);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(abs);
    } catch {
      return null;
    }
    if (st.isSymbolicLink()) {
      if (++hops > 40) return null;
      const target = fs.readlinkSync(abs);
      parts = [...target.split('/').filter(Boolean), ...parts];
      if (target.startsWith('/')) done = [];
      continue;
    }
    if (parts.length > 0 && !st.isDirectory()) return null;
    done = cur;
  }
  const final = path.join(root, ...done);
  try {
    return fs.statSync(final).isFile() ? '/' + done.join('/') : null;
  } catch {
    return null;
  }
}

/** The kernel and initramfs the boot chain loads, resolved inside the tree. */
export interface KernelFiles {
  vmlinuz: string;
  initrd: string;
}

export function findKernel(root: string): KernelFiles {
  const vmlinuz = resolveInTree(root, '/vmlinuz');
  const initrd = resolveInTree(root, '/initrd.img');
  const missing = [vmlinuz ? null : '/vmlinuz', initrd ? null : '/initrd.img'].filter(Boolean);
  if (missing.length > 0) {
    throw new IbuError(
      'IMAGE_NO_KERNEL',
      `the tree has no ${missing.join(' and no ')} (a file or a link to one inside the tree): ` +
        `install a kernel package in the tree, or pass --no-kernel for an image that is not booted.`,
    );
  }
  return { vmlinuz: vmlinuz!, initrd: initrd! };
}
