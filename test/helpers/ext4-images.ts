/**
 * Shared helpers for tests that need real ext4 images: build a file tree from a small spec,
 * turn it into an image with the real mke2fs -d, and ask the real debugfs about it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export type TreeNode =
  | string // a regular file with this UTF-8 content
  | Buffer // a regular file with these bytes
  | { type: 'file'; content?: string | Buffer; mode?: number; mtime?: number }
  /** A sparse file of `size` bytes with data only at the given offsets. */
  | { type: 'sparse'; size: number; chunks: Array<{ offset: number; data: Buffer }> }
  | { type: 'dir'; children?: TreeSpec; mode?: number }
  | { type: 'symlink'; target: string }
  /** A hard link to another path of the tree (relative to the tree root), made after it. */
  | { type: 'hardlink'; to: string }
  | { type: 'fifo' }
  /** A device node (mknod needs root). */
  | { type: 'chardev' | 'blockdev'; major: number; minor: number };

export type TreeSpec = { [name: string]: TreeNode };

/** A fresh directory under os.tmpdir(); remove it with fs.rmSync(dir, {recursive: true}). */
export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
}

/** Creates `spec` under `root` (which must exist). Hard links are made after everything else. */
export function makeTree(root: string, spec: TreeSpec): void {
  const links: Array<[string, string]> = [];
  const build = (dir: string, s: TreeSpec): void => {
    for (const [name, node] of Object.entries(s)) {
      const p = path.join(dir, name);
      if (typeof node === 'string' || Buffer.isBuffer(node)) {
        fs.writeFileSync(p, node);
      } else if (node.type === 'file') {
        fs.writeFileSync(p, node.content ?? '');
        if (node.mode !== undefined) fs.chmodSync(p, node.mode);
        if (node.mtime !== undefined) fs.utimesSync(p, node.mtime, node.mtime);
      } else if (node.type === 'sparse') {
        const fd = fs.openSync(p, 'w');
        try {
          fs.ftruncateSync(fd, node.size);
          for (const c of node.chunks) fs.writeSync(fd, c.data, 0, c.data.length, c.offset);
        } finally {
          fs.closeSync(fd);
        }
      } else if (node.type === 'dir') {
        fs.mkdirSync(p);
        build(p, node.children ?? {});
        if (node.mode !== undefined) fs.chmodSync(p, node.mode);
      } else if (node.type === 'symlink') {
        fs.symlinkSync(node.target, p);
      } else if (node.type === 'hardlink') {
        links.push([path.join(root, node.to), p]);
      } else if (node.type === 'fifo') {
        execFileSync('mkfifo', [p]);
      } else if (node.type === 'chardev' || node.type === 'blockdev') {
        execFileSync('mknod', [p, node.type === 'chardev' ? 'c' : 'b', String(node.major), String(node.minor)]);
      }
    }
  };
  build(root, spec);
  for (const [target, link] of links) fs.linkSync(target, link);
}

/**
 * A file of `size` bytes whose content is cheap to make but never repeats at block scale:
 * one random 1 MiB block, with the MiB's index stamped in its first 8 bytes.
 */
export function writePatternFile(file: string, size: number, seed = 1): void {
  const mib = 1 << 20;
  const block = seededBytes(mib, seed);
  const fd = fs.openSync(file, 'w');
  try {
    for (let off = 0, i = 0; off < size; off += mib, i++) {
      block.writeBigUInt64LE(BigInt(i), 0);
      fs.writeSync(fd, block, 0, Math.min(mib, size - off), off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** A deterministic pseudo-random byte stream (xorshift32): each call continues the sequence. */
export function xorshiftStream(seed: number): (n: number) => Buffer {
  let x = seed >>> 0 || 1;
  return (n) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      b[i] = x & 0xff;
    }
    return b;
  };
}

/** Deterministic pseudo-random bytes (xorshift32). */
export function seededBytes(n: number, seed: number): Buffer {
  return xorshiftStream(seed)(n);
}

export interface MkfsOptions {
  /** Bytes; the image file is created sparse at this size. */
  size: number;
  blockSize?: 1024 | 2048 | 4096;
  /** mke2fs -t: ext4 (extents) by default; ext2/ext3 use block maps. */
  type?: 'ext2' | 'ext3' | 'ext4';
  /** mke2fs -O list, e.g. ['^64bit'] or ['inline_data']. */
  features?: string[];
  /** Run `e2fsck -fyD` afterwards: mke2fs -d writes linear directories, e2fsck -D indexes large ones (htree). */
  indexDirs?: boolean;
  inodeSize?: number;
  /** Fixed UUID and directory hash seed, for reproducible images. */
  uuid?: string;
  /** Pins the times mke2fs and e2fsck invent (E2FSPROGS_FAKE_TIME); see also setTreeTimes. */
  fakeTime?: number;
}

/** Sets every mtime/atime under `root` (symlinks themselves included) to `seconds`. */
export function setTreeTimes(root: string, seconds: number): void {
  for (const name of fs.readdirSync(root)) {
    const p = path.join(root, name);
    if (fs.lstatSync(p).isDirectory()) setTreeTimes(p, seconds);
    fs.lutimesSync(p, seconds, seconds);
  }
  fs.utimesSync(root, seconds, seconds);
}

/** Makes an ext4/ext3/ext2 image of `srcDir` at `out` with the real mke2fs -d. */
export function mkfs(srcDir: string, out: string, opts: MkfsOptions): string {
  const args = ['-q', '-F', '-t', opts.type ?? 'ext4', '-b', String(opts.blockSize ?? 4096)];
  if (opts.features?.length) args.push('-O', opts.features.join(','));
  if (opts.inodeSize) args.push('-I', String(opts.inodeSize));
  if (opts.uuid) args.push('-U', opts.uuid, '-E', `hash_seed=${opts.uuid}`);
  fs.rmSync(out, { force: true });
  fs.closeSync(fs.openSync(out, 'w'));
  fs.truncateSync(out, opts.size);
  args.push('-d', srcDir, out);
  const env = opts.fakeTime === undefined ? process.env : { ...process.env, E2FSPROGS_FAKE_TIME: String(opts.fakeTime) };
  execFileSync('mke2fs', args, { stdio: ['ignore', 'ignore', 'pipe'], env });
  if (opts.indexDirs) {
    const r = spawnSync('e2fsck', ['-fyD', out], { stdio: ['ignore', 'ignore', 'pipe'], env });
    // 0: nothing changed, 1: directories were optimised; anything else is a real failure.
    if (r.status !== 0 && r.status !== 1) throw new Error(`e2fsck -fyD ${out} failed (${r.status}): ${r.stderr}`);
  }
  return out;
}

/** Quotes a path for a debugfs command line. */
export function dq(p: string): string {
  return `"${p.replace(/(["\\])/g, '\\$1')}"`;
}

/**
 * Runs many debugfs commands in one process (`debugfs -f`) and returns each command's output.
 * `write` opens the image read-write (-w).
 */
export function debugfs(img: string, commands: string[], write = false): string[] {
  const dir = tempDir('ibu-debugfs');
  try {
    const file = path.join(dir, 'cmds');
    fs.writeFileSync(file, commands.join('\n') + '\n');
    const out = execFileSync('debugfs', [...(write ? ['-w'] : []), '-f', file, img], {
      stdio: ['ignore', 'pipe', 'pipe'],
      maxBuffer: 1 << 30,
    }).toString('utf8');
    const parts = out.split(/^debugfs: /m).slice(1);
    if (parts.length !== commands.length) throw new Error(`debugfs gave ${parts.length} outputs for ${commands.length} commands`);
    return parts.map((p) => p.slice(p.indexOf('\n') + 1));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The contents of many inodes through one `debugfs -f` run of `cat <ino>` commands, split at
 * debugfs's own echo of each command (no temporary files). Note that debugfs prints all 60
 * bytes of i_block for an inline-data file, whatever its size.
 */
export function debugfsCat(img: string, inos: number[]): Buffer[] {
  const dir = tempDir('ibu-debugfs');
  try {
    const file = path.join(dir, 'cmds');
    fs.writeFileSync(file, inos.map((i) => `cat <${i}>`).join('\n') + '\n');
    const out = execFileSync('debugfs', ['-f', file, img], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 2 ** 31 });
    const res: Buffer[] = [];
    let cursor = 0;
    for (let k = 0; k < inos.length; k++) {
      const marker = Buffer.from(`debugfs: cat <${inos[k]}>\n`);
      const at = out.indexOf(marker, cursor);
      if (at < 0) throw new Error(`debugfs output has no echo of 'cat <${inos[k]}>'`);
      if (k > 0) res.push(out.subarray(cursor, at));
      cursor = at + marker.length;
    }
    if (inos.length > 0) res.push(out.subarray(cursor));
    return res;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface DebugfsLsEntry {
  ino: number;
  mode: number; // full mode incl. type bits
  uid: number;
  gid: number;
  name: string;
  size: number | undefined; // empty for directories
}

/** Parses `ls -p` output: /ino/mode/uid/gid/name/size/ per line ('.' and '..' dropped). */
export function parseLsP(out: string): DebugfsLsEntry[] {
  const res: DebugfsLsEntry[] = [];
  for (const line of out.split('\n')) {
    if (!line.startsWith('/')) continue;
    const m = /^\/(\d+)\/(\d+)\/(\d+)\/(\d+)\/(.*)\/(\d*)\/$/.exec(line);
    if (!m) throw new Error(`unexpected debugfs ls -p line: ${line}`);
    const name = m[5]!;
    if (name === '.' || name === '..' || m[1] === '0') continue; // ino 0: an unused slot
    res.push({ ino: Number(m[1]), mode: parseInt(m[2]!, 8), uid: Number(m[3]), gid: Number(m[4]), name, size: m[6] === '' ? undefined : Number(m[6]) });
  }
  return res;
}

export interface DebugfsExtent {
  logical: number;
  physical: number;
  length: number;
  uninit: boolean;
}

/**
 * Parses the EXTENTS:/BLOCKS: section of `stat` into data runs (tree and indirect blocks such
 * as (ETB0), (IND), (DIND) left out) and counts the extent tree levels seen.
 */
export function parseStatBlocks(out: string): { extents: DebugfsExtent[]; treeBlocks: string[]; treeBlockNumbers: number[]; size: number } {
  const sizeM = /Size: (\d+)/.exec(out);
  const idx = out.search(/^(EXTENTS|BLOCKS):$/m);
  const extents: DebugfsExtent[] = [];
  const treeBlocks: string[] = [];
  const treeBlockNumbers: number[] = [];
  if (idx >= 0) {
    const body = out
      .slice(out.indexOf('\n', idx) + 1)
      .split('\n')
      .filter((l) => !l.startsWith('TOTAL'))
      .join(' ');
    for (const item of body.split(/,\s*/)) {
      const t = item.trim();
      if (!t) continue;
      const meta = /^\(([A-Z]+\d*)\):(\d+)(?:-(\d+))?$/.exec(t);
      if (meta) {
        treeBlocks.push(meta[1]!);
        treeBlockNumbers.push(Number(meta[2]));
        continue;
      }
      const m = /^\((\d+)(?:-(\d+))?(\[u\])?\):(\d+)(?:-(\d+))?$/.exec(t);
      if (!m) throw new Error(`unexpected debugfs stat block item: ${t}`);
      const lStart = Number(m[1]);
      const lEnd = m[2] ? Number(m[2]) : lStart;
      extents.push({ logical: lStart, physical: Number(m[4]), length: lEnd - lStart + 1, uninit: !!m[3] });
    }
  }
  return { extents, treeBlocks, treeBlockNumbers, size: sizeM ? Number(sizeM[1]) : -1 };
}

/** Merges runs that continue each other logically and physically (for comparing layouts). */
export function coalesce<T extends { logical: number; physical: number; length: number; uninit: boolean }>(xs: T[]): DebugfsExtent[] {
  const out: DebugfsExtent[] = [];
  for (const x of xs) {
    const last = out[out.length - 1];
    if (last && last.uninit === x.uninit && last.logical + last.length === x.logical && last.physical + last.length === x.physical) last.length += x.length;
    else out.push({ logical: x.logical, physical: x.physical, length: x.length, uninit: x.uninit });
  }
  return out;
}
