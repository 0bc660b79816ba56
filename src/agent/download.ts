import { IbuError } from '../errors.js';
import { chunksTransport } from './transports/chunks.js';
import { deltaTransport } from './transports/delta.js';
import { attempt, isPass, type DownloadDeps, type DownloadRequest, type DownloadResult, type Transport } from './transports/transport.js';
import { zfsTransport } from './transports/zfs.js';

export type { DeltaApplier, DownloadDeps, DownloadRequest, DownloadResult } from './transports/transport.js';

/** In order of preference; chunks last, always available. */
const TRANSPORTS: readonly Transport[] = [zfsTransport, deltaTransport, chunksTransport];

/**
 * The download planner: each available transport in turn (a ZFS stream with `transport: "zfs"`,
 * the server's delta from the running image, the release's chunks) until one produces the image
 * at `out`, each hashing the whole image against the signed manifest first. Which failures move
 * on to the next transport is a property of the error code (allowsTransportFallback in
 * src/errors.ts).
 */
export async function downloadImage(req: DownloadRequest, deps: DownloadDeps): Promise<DownloadResult> {
  const ctx = { req, deps };
  let chunksOnly = false;
  for (const t of TRANSPORTS) {
    if ((chunksOnly && t !== chunksTransport) || !t.available(ctx)) continue;
    const r = await attempt(t, ctx);
    if (!isPass(r)) return r;
    if (r.pass === 'chunks') chunksOnly = true;
  }
  throw new IbuError('INTERNAL', 'No download transport produced the image; this is a bug (chunks always run last).');
}
