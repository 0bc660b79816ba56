import { mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { run } from '../../src/util/exec.js';

export function tmpDir(tag: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), `ibu-rel-${tag}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic pseudo-random bytes (so two image versions can share content on purpose). */
export function prng(seed: string, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  let ctr = 0;
  for (let off = 0; off < n; off += 32) {
    createHash('sha256')
      .update(`${seed}:${ctr++}`)
      .digest()
      .copy(out, off, 0, Math.min(32, n - off));
  }
  return out;
}

/** Compressible but non-trivial text-like bytes. */
export function texty(seed: string, n: number): Buffer {
  const words = ['alpha', 'beta', 'gamma', 'delta', 'kernel', 'module', 'libc', 'usr', 'share', 'doc', '\n', 'ibu', 'ext4'];
  const r = prng(seed, n);
  const parts: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const w = words[r[i % n]! % words.length]! + (r[(i * 7) % n]! & 1 ? ' ' : '');
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

export interface TreeSpec {
  /** path → content */
  files: Record<string, Buffer | string>;
  kernel?: boolean;
}

/** Builds a real ext4 image with mke2fs -d (4 KiB blocks, fixed UUID) from a tree spec. */
export async function buildImage(dir: string, name: string, spec: TreeSpec, sizeMiB = 48): Promise<string> {
  const root = path.join(dir, `${name}.root`);
  mkdirSync(root, { recursive: true });
  for (const [p, c] of Object.entries(spec.files)) {
    const f = path.join(root, p);
    mkdirSync(path.dirname(f), { recursive: true });
    writeFileSync(f, c);
  }
  if (spec.kernel ?? true) {
    mkdirSync(path.join(root, 'boot'), { recursive: true });
    writeFileSync(path.join(root, 'boot/vmlinuz-6.1.0-1-amd64'), prng(`kernel-${name}`, 300_000));
    writeFileSync(path.join(root, 'boot/initrd.img-6.1.0-1-amd64'), prng(`initrd-${name}`, 200_000));
    symlinkSync('boot/vmlinuz-6.1.0-1-amd64', path.join(root, 'vmlinuz'));
    symlinkSync('boot/initrd.img-6.1.0-1-amd64', path.join(root, 'initrd.img'));
  }
  const img = path.join(dir, `${name}.img`);
  await run(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-b',
      '4096',
      '-U',
      '6b1c3c1e-1111-4a4a-9c9c-000000000001',
      '-E',
      'hash_seed=6b1c3c1e-1111-4a4a-9c9c-000000000002,root_owner=0:0',
      '-d',
      root,
      img,
      `${sizeMiB}M`,
    ],
    { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' } },
  );
  rmSync(root, { recursive: true, force: true });
  return img;
}

/** A small release pair: v1 and v2 share most files, v2 changes a few and adds one. */
export function releaseTrees(): { v1: TreeSpec; v2: TreeSpec } {
  const common: Record<string, Buffer> = {};
  for (let i = 0; i < 40; i++) common[`usr/lib/lib${i}.so`] = Buffer.concat([texty(`lib${i}`, 20_000 + i * 3000), prng(`bin${i}`, 30_000)]);
  const v1 = { files: { ...common, 'etc/os-release': 'VERSION=1\n', 'usr/bin/app': prng('app1', 400_000) } };
  const v2files: Record<string, Buffer | string> = {
    ...common,
    'etc/os-release': 'VERSION=2\n',
    'usr/bin/app': Buffer.concat([prng('app1', 200_000), prng('app2-patch', 5_000), prng('app1', 400_000).subarray(205_000)]),
  };
  v2files['usr/lib/lib3.so'] = prng('lib3-new', 60_000);
  v2files['usr/share/new.txt'] = texty('new', 50_000);
  return { v1, v2: { files: v2files } };
}

export { randomBytes };
