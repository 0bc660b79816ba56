import { promises as fsp } from 'node:fs';
import { ProgressBar } from '../../util/progress-bar.js';
import { freeBytes } from '../disk-policy.js';
import type { Transport, TransportContext } from './transport.js';

async function drop(file: string): Promise<void> {
  await fsp.rm(file, { force: true });
  await fsp.rm(`${file}.etag`, { force: true });
}

function deltaFile({ req }: TransportContext): string {
  return req.dir.delta(req.from!.version, req.manifest.version);
}

/**
 * The server's ibu delta from the running image: passes when the server has none in time or it
 * would not fit; a delta that fails to download or apply falls back to chunks.
 */
export const deltaTransport: Transport = {
  name: 'delta',

  available: ({ req, deps }) => deps.cfg.download.useDelta && deps.server !== null && deps.applyDelta !== undefined && req.from !== null,

  async fetch(ctx) {
    const { req: r, deps: d } = ctx;
    const from = r.from!;
    const to = r.manifest.version;
    const file = deltaFile(ctx);
    const bar = new ProgressBar(`delta ${from.version}→${to}`, d.progress);
    let ok: boolean;
    try {
      const free = await freeBytes(d.cfg.imagesDir);
      // Named encoders let the server recompress compressed files (docs/delta-format.md); none, a plain delta.
      const encoders = await d.deltaEncoders?.().catch(() => '');
      ok = await d.server!.downloadDelta(from.version, to, file, {
        encoders,
        deadline: Date.now() + d.cfg.download.deltaWaitSeconds * 1000,
        maxRetryAfterSeconds: d.cfg.download.maxRetryAfterSeconds,
        // The delta and the image it produces must both fit.
        maxBytes: Math.max(0, free - r.imageBytes - d.cfg.space.reserveBytes),
        onProgress: (done, total) => bar.update({ done, total }),
        onWait: (s) => d.log(s),
      });
    } finally {
      bar.end();
    }
    if (!ok) {
      d.log(`no delta ${from.version}→${to} in time; fetching chunks`);
      return { pass: 'next' };
    }
    await d.applyDelta!({
      sourceImage: from.image,
      delta: file,
      out: r.out,
      manifest: r.manifest,
      fallbackStore: d.store ?? undefined,
      expectFromVersion: from.version,
      expectToVersion: to,
    });
    const size = (await fsp.stat(file)).size;
    await drop(file);
    return { method: 'delta', downloadedBytes: size };
  },

  async fallback(ctx, err) {
    ctx.deps.log(`the delta route failed (${err.message}); fetching chunks instead`);
    await drop(deltaFile(ctx));
    await fsp.rm(ctx.req.out, { force: true });
    return { pass: 'next' };
  },
};
