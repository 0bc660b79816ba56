import { mkdtempSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import pg from 'pg';
import { PG_URL } from '../fleet/backends.js';
import { childExecArgv } from '../../src/server/store-delta-builder.js';
import { generateKeys } from '../../src/release/keys.js';
import { publishRelease } from '../../src/release/publish.js';
import { LocalStore } from '../../src/store/local-store.js';
import { run } from '../../src/util/exec.js';
import { createServer, type IbuServer, type ServeOptions } from '../../src/server/app.js';

// The tests compare files by their sha256 with the same function the server uses.
export { sha256File } from '../../src/util/sha256-file.js';

export function tmpDir(tag: string): string {
  return mkdtempSync(path.join(os.tmpdir(), `ibu-server-${tag}-`));
}

/** Deterministic pseudo-random bytes (so images differ by what a test changes, not by chance). */
export function bytes(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash('sha256').update(seed).digest();
  for (let o = 0; o < n; o += 32) {
    block.copy(out, o, 0, Math.min(32, n - o));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/**
 * A small real ext4 image made by mke2fs -d from a generated tree: `files` maps paths to
 * contents. Real images so the real publish and delta code run on them.
 */
export async function makeImage(dir: string, name: string, files: Record<string, Buffer | string>, sizeMiB = 16): Promise<string> {
  const tree = path.join(dir, `${name}.tree`);
  await fsp.rm(tree, { recursive: true, force: true });
  for (const [p, data] of Object.entries(files)) {
    const f = path.join(tree, p);
    await fsp.mkdir(path.dirname(f), { recursive: true });
    await fsp.writeFile(f, data);
  }
  const img = path.join(dir, `${name}.img`);
  await fsp.rm(img, { force: true });
  await run(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-b',
      '4096',
      '-E',
      'root_owner=0:0,hash_seed=11111111-2222-3333-4444-555555555555',
      '-U',
      '11111111-2222-3333-4444-555555555555',
      '-d',
      tree,
      img,
      `${sizeMiB}M`,
    ],
    {
      env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' },
    },
  );
  await fsp.rm(tree, { recursive: true, force: true });
  return img;
}

/** Tree contents for release n: mostly shared files, a few that change per release. */
export function releaseTree(n: number): Record<string, Buffer | string> {
  const files: Record<string, Buffer | string> = {};
  for (let i = 0; i < 20; i++) files[`usr/lib/lib${i}.so`] = bytes(`lib${i}`, 40_000 + i * 1000);
  files['usr/bin/app'] = bytes(`app-v${n}`, 300_000);
  files['etc/os-release'] = `VERSION_ID=${n}\n`;
  files[`usr/share/doc/changes-${n}.txt`] = bytes(`doc${n}`, 5_000).toString('hex');
  return files;
}

export interface Publisher {
  store: string;
  keyFile: string;
  /** Publishes a release built from `files` (default releaseTree(n)); returns its image, kept for checks. */
  publish(version: string, files?: Record<string, Buffer | string>, channel?: string): Promise<string>;
}

/** Real keys and the real publish code writing into `store` (what `ibu release publish` does). */
export async function publisher(store: string, work: string): Promise<Publisher> {
  const keys = await generateKeys(path.join(work, 'keys'));
  return {
    store,
    keyFile: keys.privateKeyPath,
    async publish(version, files, channel = 'stable') {
      const n = Number(version.split('.').pop());
      const img = await makeImage(work, `img-${version}`, files ?? releaseTree(n));
      await publishRelease({ image: img, version, store: new LocalStore(store), keyFiles: [keys.privateKeyPath], channel, requireKernel: false });
      return img;
    },
  };
}

export interface Running extends IbuServer {
  url: string;
  close(): Promise<void>;
}

export async function start(o: ServeOptions, beforeListen?: (s: IbuServer) => void): Promise<Running> {
  const s = await createServer({ logger: false, rescanIntervalMs: 0, fleet: false, ...o });
  beforeListen?.(s);
  await s.app.listen({ host: '127.0.0.1', port: 0 });
  const addr = s.app.server.address();
  if (!addr || typeof addr === 'string') throw new Error('no address');
  let closed = false;
  return {
    ...s,
    url: `http://127.0.0.1:${addr.port}`,
    async close() {
      if (closed) return;
      closed = true;
      await s.app.close();
    },
  };
}

export const agent = new Agent({ connections: 256, pipelining: 1, keepAliveTimeout: 10_000 });

export async function get(url: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' | 'POST' | 'DELETE' = 'GET', body?: string) {
  const res = await request(url, {
    method,
    headers: body !== undefined ? { 'content-type': 'application/json', ...headers } : headers,
    dispatcher: agent,
    body,
  });
  const buf = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body: buf, json: () => JSON.parse(buf.toString('utf8')) as Record<string, unknown> };
}

export async function waitFor<T>(what: string, f: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000, everyMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The `ibu` CLI as a separate process (TypeScript under tsx in development, compiled JS in CI). */
export function cliCommand(): string[] {
  const self = import.meta.url;
  const entry = fileURLToPath(new URL(`./serve-entry.${self.endsWith('.ts') ? 'ts' : 'js'}`, self));
  return [...childExecArgv(), entry];
}

/** A fresh PostgreSQL database for one suite, and its removal. */
export async function scratchDatabase(tag: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `ibu_${tag}_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const u = new URL(PG_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: PG_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}
