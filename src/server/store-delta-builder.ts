import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyBaseLogger } from 'fastify';
import { runChild, type DeltaBuilder } from './delta-builder.js';
import { S3Store, s3OptionsToEnv } from '../store/s3-store.js';
import type { StoreLayout } from './store-layout.js';
import { formatEncoders } from '../delta/encoder-set.js';
import { parseDeltaJob } from './recompress-deltas.js';

export interface StoreDeltaBuilderOptions {
  layout: StoreLayout;
  /** Allocated bytes of reconstructed images kept in cache/images (LRU beyond that). */
  imageCacheBytes: number;
}

/** The child entry point, as .ts under tsx (tests) and .js when compiled. */
export function buildProcessScript(): string {
  const self = import.meta.url;
  return fileURLToPath(new URL(`./delta-build-process.${self.endsWith('.ts') ? 'ts' : 'js'}`, self));
}

/**
 * The node flags a child needs to load our modules the way this process does (a TypeScript loader
 * under tsx), without test-runner or inspector flags.
 */
export function childExecArgv(): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (['--import', '--require', '-r', '--loader', '--experimental-loader'].includes(a) && i + 1 < argv.length) {
      out.push(a, argv[++i]!);
    } else if (
      /^--(import|require|loader|experimental-loader)=/.test(a) ||
      a.startsWith('--experimental') ||
      a.startsWith('--no-warnings') ||
      a.startsWith('--enable-source-maps')
    ) {
      out.push(a);
    }
  }
  return out;
}

/**
 * The default delta builder: releases are stored as chunks, not images, so both images are first
 * reconstructed from the store into cache/images (one child process per version, shared by jobs
 * that need the same version at once), then a second child runs makeDelta. Child processes keep
 * the CPU-heavy work off the server's event loop and can be killed on shutdown. The image cache
 * is kept under its own byte quota, evicting the least recently used image not in use by a build.
 */
export function storeDeltaBuilder(o: StoreDeltaBuilderOptions): DeltaBuilder {
  const { layout } = o;
  const script = buildProcessScript();
  const node = [...childExecArgv(), script];
  const pins = new Map<string, number>();
  const making = new Map<string, Promise<void>>();

  const pin = (v: string): void => void pins.set(v, (pins.get(v) ?? 0) + 1);
  const unpin = (v: string): void => {
    const n = (pins.get(v) ?? 1) - 1;
    if (n <= 0) pins.delete(v);
    else pins.set(v, n);
  };

  async function ensureImage(version: string, signal: AbortSignal, log: FastifyBaseLogger): Promise<string> {
    const file = layout.image(version);
    const existing = making.get(version);
    if (existing) {
      await existing;
      return file;
    }
    try {
      await fsp.access(file);
      const now = new Date();
      await fsp.utimes(file, now, now); // LRU mark
      return file;
    } catch {
      // not cached: reconstruct it
    }
    const p = (async () => {
      const t0 = Date.now();
      // An S3 release store: the child reads the bucket with the same settings (AWS_* environment).
      const s3 = layout.releases instanceof S3Store ? layout.releases : undefined;
      const from = s3 ? ['--store', s3.location] : ['--data', layout.root];
      const env = s3 ? { ...process.env, ...s3OptionsToEnv(s3.options) } : undefined;
      await runChild(process.execPath, [...node, 'image', ...from, '--version', version, '--out', file], { signal, env });
      log.info({ version, ms: Date.now() - t0 }, 'release image reconstructed from chunks');
    })();
    making.set(version, p);
    try {
      await p;
    } finally {
      making.delete(version);
    }
    return file;
  }

  async function pruneImages(log: FastifyBaseLogger): Promise<void> {
    const entries: Array<{ version: string; file: string; bytes: number; mtime: number }> = [];
    for (const n of await fsp.readdir(layout.imagesDir).catch(() => [] as string[])) {
      if (!n.endsWith('.img')) continue;
      const file = path.join(layout.imagesDir, n);
      const st = await fsp.stat(file).catch(() => undefined);
      if (st) entries.push({ version: n.slice(0, -4), file, bytes: st.blocks * 512, mtime: st.mtimeMs });
    }
    let used = entries.reduce((a, e) => a + e.bytes, 0);
    for (const e of entries.sort((a, b) => a.mtime - b.mtime)) {
      if (used <= o.imageCacheBytes) break;
      if (pins.has(e.version) || making.has(e.version)) continue;
      await fsp.rm(e.file, { force: true });
      used -= e.bytes;
      log.info({ version: e.version, bytes: e.bytes }, 'evicted cached release image');
    }
  }

  return async ({ from: key, to, out, signal, log }) => {
    // A recompressing job (src/server/recompress-deltas.ts) builds from the version its key names.
    const { from, encoders } = parseDeltaJob(key);
    pin(from);
    pin(to);
    try {
      const [a, b] = await Promise.all([ensureImage(from, signal, log), ensureImage(to, signal, log)]);
      const rc = encoders ? ['--encoders', formatEncoders(encoders)] : [];
      await runChild(process.execPath, [...node, 'delta', '--from-image', a, '--to-image', b, '--out', out, ...rc], { signal });
    } finally {
      unpin(from);
      unpin(to);
      await pruneImages(log).catch((err) => log.warn({ err }, 'image cache pruning failed'));
    }
  };
}
