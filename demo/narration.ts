/**
 * What both demos share: timestamped narration, the demo's own error, and a follower of the
 * server's request log that narrates the device's requests (the demos differ in the device only).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ibu } from '../test/e2e/harness.js';
import { formatBytes } from '../src/util/bytes.js';

/** When the demo started (every narrated time counts from here). */
export const t0 = Date.now();

export function say(line: string): void {
  const t = ((Date.now() - t0) / 1000).toFixed(1).padStart(6);
  process.stdout.write(`[${t}s] ${line}\n`);
}
export function step(title: string): void {
  process.stdout.write('\n');
  say(`==> ${title}`);
}

export class DemoError extends Error {}

/** Follows the server's pino request log and narrates the device's requests. */
export function followServerLog(file: string, base: string): { stop: () => Promise<void>; chunkRequests: () => number } {
  let offset = 0;
  let pending = '';
  let chunks = 0;
  const reqs = new Map<string, { method: string; url: string }>();
  const poll = async () => {
    let fh;
    try {
      fh = await fsp.open(file, 'r');
      const { size } = await fh.stat();
      if (size <= offset) return;
      const buf = Buffer.alloc(size - offset);
      await fh.read(buf, 0, buf.length, offset);
      offset = size;
      pending += buf.toString('utf8');
    } catch {
      return;
    } finally {
      await fh?.close();
    }
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      let e: { reqId?: string; req?: { method?: string; url?: string }; res?: { statusCode?: number }; responseTime?: number };
      try {
        e = JSON.parse(line);
      } catch {
        continue;
      }
      if (e.reqId && e.req?.url) reqs.set(e.reqId, { method: e.req.method ?? '?', url: e.req.url });
      const r = e.reqId ? reqs.get(e.reqId) : undefined;
      if (!r || e.res?.statusCode === undefined) continue;
      if (!r.url.startsWith('/v1/devices/') && !r.url.startsWith('/v1/deltas/') && !r.url.startsWith('/v1/chunks/')) continue;
      if (r.method === 'HEAD') continue; // the demo's own size probe below
      if (r.url.startsWith('/v1/chunks/')) {
        chunks++;
        continue;
      }
      let note = '';
      if (r.url.startsWith('/v1/deltas/')) {
        if (e.res.statusCode === 202) note = ' (delta being built; device waits)';
        if (e.res.statusCode === 200) {
          const len = await fetch(base + r.url, { method: 'HEAD' }).then(
            (h) => h.headers.get('content-length'),
            () => null,
          );
          note = ` (delta served${len ? `: ${formatBytes(Number(len))}` : ''})`;
        }
      }
      say(`[server] ${r.method} ${r.url} -> ${e.res.statusCode}${note}`);
    }
  };
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void poll().finally(() => (busy = false));
  }, 300);
  return {
    stop: async () => {
      clearInterval(timer);
      while (busy) await new Promise((r) => setTimeout(r, 50));
      await poll();
    },
    chunkRequests: () => chunks,
  };
}

/**
 * The demos' publishing step: a signing key in WORK/keys, then each image published on 'stable'
 * into WORK/store with `ibu release publish`, narrated. Returns the key and store directories.
 */
export async function publishReleases(work: string, images: [version: string, image: string][]): Promise<{ keys: string; store: string }> {
  step('signing key + publishing both releases into a content-addressed chunk store');
  const keys = path.join(work, 'keys');
  await ibu('keys', 'generate', '--out', keys);
  say(`ed25519 key pair in ${keys}; the device trusts signing.pub`);
  const store = path.join(work, 'store');
  for (const [v, img] of images) {
    const out = await ibu(
      'release',
      'publish',
      '--image',
      img,
      '--version',
      v,
      '--store',
      store,
      '--key',
      path.join(keys, 'signing.key'),
      '--channel',
      'stable',
      '--json',
    );
    const r = JSON.parse(out.stdout) as { chunks: number; newChunks: number; newStoredBytes: number };
    say(`published ${v} on 'stable': ${r.chunks} chunks, ${r.newChunks} new (${formatBytes(r.newStoredBytes)} stored, zstd)`);
  }
  return { keys, store };
}

/** Runs a demo: exit 0 on success; on failure the reason (a DemoError's message, else the stack) and exit 1. */
export function runDemo(main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stdout.write('\n');
      const msg = err instanceof DemoError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
      say(`DEMO FAILED: ${msg}`);
      process.exit(1);
    },
  );
}
