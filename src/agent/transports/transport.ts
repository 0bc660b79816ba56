import { allowsTransportFallback, isIbuError, type IbuError } from '../../errors.js';
import type { Keyring } from '../../release/keyring.js';
import type { Manifest } from '../../release/types.js';
import type { Store } from '../../store/store.js';
import type { AgentConfig } from '../config.js';
import type { ImagesDir } from '../images-dir.js';
import type { ServerClient } from '../server-client.js';

/** Applies a delta to produce the target image (src/delta's applyDelta, injected so it loads only when used). */
export type DeltaApplier = (o: {
  sourceImage: string;
  delta: string;
  out: string;
  manifest: Manifest;
  fallbackStore?: Store;
  expectFromVersion: string;
  expectToVersion: string;
}) => Promise<unknown>;

export interface DownloadRequest {
  manifest: Manifest;
  /** Where the finished, verified image goes (the staging file). */
  out: string;
  /** The running version and its image file, when installed: the delta's source and the first seed. */
  from: { version: string; image: string } | null;
  /** Other installed images worth seeding from (the committed default). */
  seeds: string[];
  /** Where a delta or a ZFS stream is downloaded to (resumed with Range). */
  dir: ImagesDir;
  /** Bytes the image will allocate, to know how big a delta still fits. */
  imageBytes: number;
  /** A conventionally installed system's root to seed chunks from (upgradectl adopt; src/release/live-seed.ts). */
  liveRoot?: string;
  /** Versions whose snapshots the ZFS transport must keep (running, default, trial). */
  protect?: string[];
}

export interface DownloadDeps {
  cfg: AgentConfig;
  server: ServerClient | null;
  store: Store | null;
  keyring: () => Promise<Keyring>;
  applyDelta?: DeltaApplier;
  /** The encoders this device can re-encode with (`xz-5.8.1~gzip-1.13~zstd-1.5.7`): the server may then send a delta with RECOMPRESS ops. */
  deltaEncoders?: () => Promise<string>;
  log: (line: string) => void;
  progress?: boolean;
}

export interface DownloadResult {
  method: 'delta' | 'chunks' | 'zfs';
  downloadedBytes: number;
  reusedBytes?: number;
  resumed?: boolean;
  /** Image bytes read from the live root's files (adoption). */
  liveSeedBytes?: number;
}

export interface TransportContext {
  req: DownloadRequest;
  deps: DownloadDeps;
}

/** A transport that did not produce the image: try the next one, or go straight to chunks. */
export interface Pass {
  pass: 'next' | 'chunks';
}

/**
 * One way to get the target image into the staging file. The planner (src/agent/download.ts)
 * asks each available transport in turn; the image a transport produces is checked against the
 * signed manifest by the caller, so every transport ends in the same bytes.
 */
export interface Transport {
  readonly name: DownloadResult['method'];
  /** Configured and possible for this request (no I/O). */
  available(ctx: TransportContext): boolean;
  /** The image, or a pass when this route has nothing to offer in time. */
  fetch(ctx: TransportContext): Promise<DownloadResult | Pass>;
  /**
   * After `fetch` threw an error whose code allows a fallback (src/errors.ts): removes what the
   * attempt left behind and says where to go on, or null when this transport must not fall back.
   */
  fallback(ctx: TransportContext, err: IbuError): Promise<Pass | null>;
}

export function isPass(r: DownloadResult | Pass): r is Pass {
  return 'pass' in r;
}

/** Runs one transport: its result, its pass, or the pass its fallback allows for a failure. */
export async function attempt(t: Transport, ctx: TransportContext): Promise<DownloadResult | Pass> {
  try {
    return await t.fetch(ctx);
  } catch (err) {
    if (!isIbuError(err) || !allowsTransportFallback(err.code)) throw err;
    const pass = await t.fallback(ctx, err);
    if (!pass) throw err;
    return pass;
  }
}
