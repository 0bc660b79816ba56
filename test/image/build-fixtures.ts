// Shared helpers of the image build tests (not a test itself).
import { createCipheriv, createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

/** Deterministic content: the same name and size always give the same bytes. */
export function content(name: string, size: number): Buffer {
  // AES-CTR over zeros: fast, incompressible, and a pure function of the name.
  const key = createHash('sha256').update(name).digest();
  const c = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return Buffer.concat([c.update(Buffer.alloc(size)), c.final()]);
}

export interface TreeEntry {
  path: string;
  kind: 'file' | 'dir' | 'symlink' | 'hardlink';
  size?: number;
  /** symlink target or hard link source (tree-relative). */
  target?: string;
  mode?: number;
  /** Content seed; defaults to the path. */
  seed?: string;
}

/** A small root tree that looks like a system: kernel links, nested dirs, links, a big file. */
export function baseSpec(): TreeEntry[] {
  const e: TreeEntry[] = [
    { path: 'boot', kind: 'dir' },
    { path: 'boot/vmlinuz-6.1.0-1-amd64', kind: 'file', size: 300_000 },
    { path: 'boot/initrd.img-6.1.0-1-amd64', kind: 'file', size: 200_000 },
    { path: 'vmlinuz', kind: 'symlink', target: 'boot/vmlinuz-6.1.0-1-amd64' },
    { path: 'initrd.img', kind: 'symlink', target: 'boot/initrd.img-6.1.0-1-amd64' },
    { path: 'etc', kind: 'dir' },
    { path: 'etc/hostname', kind: 'file', size: 9 },
    { path: 'etc/secret', kind: 'file', size: 100, mode: 0o600 },
    { path: 'usr', kind: 'dir' },
    { path: 'usr/bin', kind: 'dir' },
    { path: 'usr/lib', kind: 'dir' },
    { path: 'bin', kind: 'symlink', target: 'usr/bin' },
    { path: 'usr/lib/big.so', kind: 'file', size: 3_000_000 },
    { path: 'usr/bin/tool', kind: 'file', size: 50_000, mode: 0o755 },
    { path: 'usr/bin/tool-alias', kind: 'hardlink', target: 'usr/bin/tool' },
    { path: 'usr/share', kind: 'dir' },
    { path: 'usr/share/long-link', kind: 'symlink', target: '/usr/' + 'x'.repeat(100) },
    { path: 'var', kind: 'dir' },
    { path: 'var/empty', kind: 'file', size: 0 },
  ];
  for (let d = 0; d < 8; d++) {
    e.push({ path: `usr/share/pkg${d}`, kind: 'dir' });
    for (let f = 0; f < 40; f++) e.push({ path: `usr/share/pkg${d}/file-${f}.txt`, kind: 'file', size: 100 + ((d * 977 + f * 131) % 20000) });
  }
  return e;
}

/**
 * Creates the tree under `dir`. `reverse` creates entries in the opposite order (parents still
 * first) and with other mtimes: the same tree, reached another way.
 */
export function makeTree(dir: string, spec: TreeEntry[], opts: { reverse?: boolean; mtime?: number } = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  const dirs = spec.filter((e) => e.kind === 'dir');
  const rest = spec.filter((e) => e.kind !== 'dir' && e.kind !== 'hardlink');
  const links = spec.filter((e) => e.kind === 'hardlink');
  const order = (a: TreeEntry[]): TreeEntry[] => (opts.reverse ? [...a].reverse() : a);
  for (const e of dirs) fs.mkdirSync(path.join(dir, e.path), { recursive: true, mode: e.mode ?? 0o755 });
  for (const e of order(rest)) {
    const p = path.join(dir, e.path);
    if (e.kind === 'file') {
      fs.writeFileSync(p, content(e.seed ?? e.path, e.size ?? 0));
      fs.chmodSync(p, e.mode ?? 0o644);
    } else if (e.kind === 'symlink') {
      fs.symlinkSync(e.target!, p);
    }
  }
  for (const e of order(links)) fs.linkSync(path.join(dir, e.target!), path.join(dir, e.path));
  for (const e of dirs) fs.chmodSync(path.join(dir, e.path), e.mode ?? 0o755);
  if (opts.mtime !== undefined) {
    const t = new Date(opts.mtime * 1000);
    for (const e of spec) fs.lutimesSync(path.join(dir, e.path), t, t);
  }
}

export function tmpDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ibu-test-${prefix}-`));
}

/** Runs a command and returns stdout; throws with stderr when it fails. */
export function sh(cmd: string, args: string[], input?: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', maxBuffer: 256 << 20, env: { ...process.env, LC_ALL: 'C' } });
  return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

/** `debugfs blocks` for many paths in one session: path → physical block list (the oracle). */
export function debugfsBlocks(img: string, paths: string[]): Map<string, string> {
  const r = sh('debugfs', ['-f', '-', img], paths.map((p) => `blocks ${p}`).join('\n') + '\n');
  const out = new Map<string, string>();
  let cur: string | null = null;
  for (const line of r.stdout.split('\n')) {
    const m = /^debugfs: blocks (.*)$/.exec(line);
    if (m) {
      cur = m[1]!;
      out.set(cur, '');
    } else if (cur !== null && line.trim()) {
      out.set(cur, (out.get(cur)! + ' ' + line.trim()).trim());
    }
  }
  return out;
}

/** Free block ranges from the bitmaps, as [first, last] pairs. */
export function freeRanges(img: string): Array<[number, number]> {
  const r = sh('dumpe2fs', [img]);
  const out: Array<[number, number]> = [];
  for (const m of r.stdout.matchAll(/^\s+Free blocks:\s*(.*)$/gm)) {
    for (const part of m[1]!
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      out.push([a!, b ?? a!]);
    }
  }
  return out;
}

/** Bytes of the free blocks that are not zero (reads every free block). */
export function nonZeroFreeBlocks(img: string, blockSize = 4096): number {
  const fd = fs.openSync(img, 'r');
  const buf = Buffer.alloc(blockSize * 256);
  let bad = 0;
  try {
    for (const [a, b] of freeRanges(img)) {
      for (let blk = a; blk <= b; blk += 256) {
        const n = Math.min(256, b - blk + 1) * blockSize;
        fs.readSync(fd, buf, 0, n, blk * blockSize);
        for (let i = 0; i < n; i += blockSize) if (buf.subarray(i, i + blockSize).some((x) => x !== 0)) bad++;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return bad;
}

export function fsckClean(img: string): boolean {
  return sh('e2fsck', ['-fn', img]).code === 0;
}
