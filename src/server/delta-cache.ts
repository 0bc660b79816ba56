import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { FastifyBaseLogger } from 'fastify';
import type { DeltaQueue } from './delta-queue.js';
import type { StoreLayout } from './store-layout.js';

/** A file in a shared delta directory older than this is no build's any more (a build writes on, and renames within seconds of its end). */
export const SHARED_STALE_MS = 24 * 60 * 60_000;

/**
 * Built deltas on disk under a byte quota. Eviction takes the least recently served first and
 * skips any delta that a response is still streaming (a pin count per pair) or that was just
 * built. The quota may be exceeded while everything over it is pinned; the next eviction pass
 * (after every build and every finished stream) brings it back.
 */
export class DeltaCache {
  private readonly pins = new Map<string, number>();
  /** Set at shutdown: streams cut by a forced close must not touch the closed database. */
  closed = false;
  constructor(
    private readonly layout: StoreLayout,
    private readonly jobs: DeltaQueue,
    public quotaBytes: number,
    private readonly log: FastifyBaseLogger,
  ) {}

  private static key(from: string, to: string): string {
    return `${from}\u0000${to}`;
  }

  /** Marks a delta as being streamed; call the returned function exactly once when done. */
  pin(from: string, to: string): () => void {
    const k = DeltaCache.key(from, to);
    this.pins.set(k, (this.pins.get(k) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.pins.get(k) ?? 1) - 1;
      if (n <= 0) this.pins.delete(k);
      else this.pins.set(k, n);
      if (this.closed) return;
      void (async () => {
        if ((await this.jobs.readyBytes()) > this.quotaBytes) await this.evict();
      })().catch((err: unknown) => {
        if (!this.closed) this.log.error({ err }, 'delta eviction failed');
      });
    };
  }

  pinned(from: string, to: string): number {
    return this.pins.get(DeltaCache.key(from, to)) ?? 0;
  }

  usedBytes(): Promise<number> {
    return this.jobs.readyBytes();
  }

  /** Bytes on disk of builds in progress: `.partial` files and makeDelta's `.ibudelta-work-*` directories. */
  async inProgressBytes(): Promise<number> {
    let total = 0;
    const size = async (p: string): Promise<number> => {
      const st = await fsp.lstat(p).catch(() => undefined);
      if (!st) return 0;
      if (!st.isDirectory()) return st.blocks * 512;
      let n = 0;
      for (const c of await fsp.readdir(p).catch(() => [] as string[])) n += await size(path.join(p, c));
      return n;
    };
    for (const n of await fsp.readdir(this.layout.deltasDir).catch(() => [] as string[])) {
      if (n.endsWith('.partial') || n.startsWith('.ibudelta-work-')) total += await size(path.join(this.layout.deltasDir, n));
    }
    return total;
  }

  /** Evicts LRU deltas until the ready bytes (and those of builds in progress) fit the quota. Returns the evicted pairs. */
  evict(keep?: { from: string; to: string }): Promise<Array<{ from: string; to: string; size: number }>> {
    // One pass at a time: two passes reading the same total would evict more than needed.
    const next = this.evicting.then(() => this.evict0(keep));
    this.evicting = next.catch(() => undefined);
    return next;
  }

  private evicting: Promise<unknown> = Promise.resolve();

  private async evict0(keep?: { from: string; to: string }): Promise<Array<{ from: string; to: string; size: number }>> {
    const evicted: Array<{ from: string; to: string; size: number }> = [];
    // Builds in progress count too: their work directories and partial files take the same disk.
    let used = (await this.jobs.readyBytes()) + (await this.inProgressBytes());
    if (used <= this.quotaBytes) return evicted;
    for (const j of await this.jobs.readyByLru()) {
      if (used <= this.quotaBytes) break;
      if (keep && j.from === keep.from && j.to === keep.to) continue;
      if (this.pinned(j.from, j.to) > 0) continue;
      // Row first: a request arriving now sees 'none' and queues a rebuild instead of a missing file.
      // Only while still ready: another replica's pass may have taken it (or a rebuild is queued).
      if (!(await this.jobs.evictReady(j.from, j.to))) continue;
      await fsp.rm(this.layout.delta(j.from, j.to), { force: true });
      used -= j.size ?? 0;
      evicted.push({ from: j.from, to: j.to, size: j.size ?? 0 });
      this.log.info({ from: j.from, to: j.to, size: j.size }, 'evicted delta (quota)');
    }
    return evicted;
  }

  /** Deletes one delta now (admin or release removal); refuses while it is streaming. */
  async remove(from: string, to: string): Promise<boolean> {
    if (this.pinned(from, to) > 0) return false;
    await this.jobs.delete(from, to);
    await fsp.rm(this.layout.delta(from, to), { force: true });
    return true;
  }

  /**
   * At start: removes temp files and work directories a dead process left behind, forgets ready rows whose file is
   * gone, and deletes delta files no row knows about. With a shared queue the delta directory is shared too
   * (`--delta-dir`): files there may belong to a build in progress on another replica (a partial, or a delta
   * renamed into place a moment before its row says ready), so only those untouched for `SHARED_STALE_MS` go.
   */
  async reconcile(now = Date.now()): Promise<{ partialsRemoved: number; rowsDropped: number; filesRemoved: number }> {
    await fsp.mkdir(this.layout.deltasDir, { recursive: true });
    await fsp.mkdir(this.layout.imagesDir, { recursive: true });
    const stale = async (dir: string, n: string): Promise<boolean> => {
      if (!this.jobs.shared || dir !== this.layout.deltasDir) return true;
      const st = await fsp.lstat(path.join(dir, n)).catch(() => undefined);
      return st !== undefined && now - st.mtimeMs > SHARED_STALE_MS;
    };
    let partialsRemoved = 0;
    for (const dir of [this.layout.deltasDir, this.layout.imagesDir]) {
      for (const n of await fsp.readdir(dir)) {
        // `.ibudelta-work-*`: makeDelta's segment directory (src/delta/make.ts), left by a kill -9.
        if ((n.endsWith('.partial') || n.endsWith('.tmp') || n.startsWith('.ibudelta-work-')) && (await stale(dir, n))) {
          await fsp.rm(path.join(dir, n), { force: true, recursive: true });
          partialsRemoved++;
        }
      }
    }
    let rowsDropped = 0;
    const known = new Set<string>();
    for (const j of await this.jobs.all()) {
      if (j.state !== 'ready') continue;
      const f = this.layout.delta(j.from, j.to);
      known.add(path.basename(f));
      try {
        await fsp.stat(f);
      } catch {
        await this.jobs.evictReady(j.from, j.to);
        rowsDropped++;
      }
    }
    let filesRemoved = 0;
    for (const n of await fsp.readdir(this.layout.deltasDir)) {
      if (n.endsWith('.ibudelta') && !known.has(n) && (await stale(this.layout.deltasDir, n))) {
        await fsp.rm(path.join(this.layout.deltasDir, n), { force: true });
        filesRemoved++;
      }
    }
    return { partialsRemoved, rowsDropped, filesRemoved };
  }
}
