import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';
import { xorshiftStream } from '../helpers/ext4-images.js';

/** Fixtures for the delta tests: real ext4 images made by mke2fs -d from generated trees. */

export function tempDir(prefix = 'ibu-delta-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic pseudo-random bytes (xorshift32), so fixtures look like binaries but repeat across runs. */
export const prng = xorshiftStream;

/** A "binary" that compresses a little: random words from a small vocabulary mixed with noise. */
export function binaryish(seed: number, n: number): Buffer {
  const rnd = prng(seed);
  const vocab = Array.from({ length: 64 }, (_, i) => prng(1000 + i)(8 + (i % 24)));
  const out = Buffer.alloc(n);
  const pick = rnd(n);
  let at = 0;
  let k = 0;
  while (at < n) {
    const v = pick[k++ % pick.length]!;
    const piece = v < 200 ? vocab[v % vocab.length]! : rnd(4);
    piece.copy(out, at, 0, Math.min(piece.length, n - at));
    at += piece.length;
  }
  return out;
}

/** Returns a copy of `data` with `count` runs of `len` bytes overwritten at spread-out places. */
export function mutate(data: Buffer, seed: number, count = 4, len = 40): Buffer {
  const out = Buffer.from(data);
  const rnd = prng(seed);
  for (let i = 0; i < count; i++) {
    const at = Math.floor(((i + 0.5) / count) * Math.max(1, out.length - len));
    rnd(len).copy(out, at);
  }
  return out;
}

export type TreeEntry = Buffer | string | { symlink: string } | { sparse: number; at: Array<[number, Buffer]> };

export function writeTree(root: string, entries: Record<string, TreeEntry>): void {
  for (const [rel, e] of Object.entries(entries)) {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    if (typeof e === 'string' || Buffer.isBuffer(e)) {
      fs.writeFileSync(p, e);
    } else if ('symlink' in e) {
      fs.symlinkSync(e.symlink, p);
    } else {
      const fd = fs.openSync(p, 'w');
      fs.ftruncateSync(fd, e.sparse);
      for (const [off, b] of e.at) fs.writeSync(fd, b, 0, b.length, off);
      fs.closeSync(fd);
    }
  }
}

export interface ImageOptions {
  size?: string; // mke2fs size, e.g. '32M'
  blockSize?: number;
}

/** mke2fs -d with a fixed UUID, hash seed and time, like the image builder. */
export async function makeImage(tree: string, out: string, opts: ImageOptions = {}): Promise<void> {
  fs.rmSync(out, { force: true });
  await run(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-b',
      String(opts.blockSize ?? 4096),
      '-U',
      '6f1d2c3b-1111-4222-8333-944455556666',
      '-E',
      'hash_seed=6f1d2c3b-aaaa-4bbb-8ccc-dddd00001111,root_owner=0:0',
      '-d',
      tree,
      out,
      opts.size ?? '32M',
    ],
    { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' } },
  );
}

/**
 * Edits an image in place with debugfs -w, the way `ibu image build --previous` keeps the
 * layout: files not touched stay in their blocks.
 */
export async function debugfsEdit(img: string, commands: string[]): Promise<void> {
  const cmdFile = `${img}.debugfs-cmds`;
  fs.writeFileSync(cmdFile, commands.join('\n') + '\n');
  try {
    await run('debugfs', ['-w', '-f', cmdFile, img], { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000100' } });
  } finally {
    fs.rmSync(cmdFile, { force: true });
  }
}

export function imageJson(version: string): string {
  return JSON.stringify({ format: 1, product: 'test', version }) + '\n';
}
