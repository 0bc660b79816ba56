import { watch, type FSWatcher } from 'node:fs';
import { mkdirSync } from 'node:fs';
import type { FastifyBaseLogger } from 'fastify';
import { compareVersions } from '../version.js';
import type { FleetService } from './contracts.js';
import type { Db } from './db.js';
import { PRIORITY } from './delta-queue.js';
import type { DeltaServiceImpl } from './delta-service.js';
import type { ReleaseCatalog } from './release-catalog.js';

export interface PrecomputeResult {
  newReleases: Array<{ channel: string; version: string }>;
  queued: Array<{ from: string; to: string }>;
}

/**
 * Builds deltas before devices ask. A scan of channels/*.json (on start, on a timer, when the
 * directory changes, and when an admin announces a publish) finds releases not seen before; for
 * each, deltas are queued from the versions the fleet reports most (app.fleet.versionCounts), or
 * from the previous K releases of the channel when the fleet knows no devices. Seen releases are
 * kept in SQLite, so a restart does not precompute everything again.
 */
export class Precomputer {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private scanning: Promise<PrecomputeResult> | undefined;
  private rescanWanted = false;
  private readonly q;
  /** Queues further kinds for a pair it precomputes (ZFS streams, src/server/zfs-streams.ts). */
  alsoQueue?: (from: string, to: string) => Promise<unknown>;

  constructor(
    db: Db,
    private readonly catalog: ReleaseCatalog,
    private readonly deltas: DeltaServiceImpl,
    private readonly fleet: () => FleetService | undefined,
    readonly k: number,
    private readonly log: FastifyBaseLogger,
  ) {
    this.q = {
      known: db.prepare<[string, string], { n: number }>('SELECT COUNT(*) AS n FROM known_releases WHERE channel = ? AND version = ?'),
      any: db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM known_releases'),
      add: db.prepare('INSERT OR IGNORE INTO known_releases (channel, version, seen_at) VALUES (?, ?, ?)'),
      forget: db.prepare('DELETE FROM known_releases WHERE version = ?'),
    };
  }

  /** Scans now; concurrent callers share one scan, and a request during a scan runs one more. */
  scan(): Promise<PrecomputeResult> {
    if (this.scanning) {
      this.rescanWanted = true;
      return this.scanning;
    }
    this.scanning = this.scan0().finally(() => {
      this.scanning = undefined;
      if (this.rescanWanted) {
        this.rescanWanted = false;
        void this.scan().catch((err) => this.log.error({ err }, 'release rescan failed'));
      }
    });
    return this.scanning;
  }

  private async scan0(): Promise<PrecomputeResult> {
    const result: PrecomputeResult = { newReleases: [], queued: [] };
    const firstScan = this.q.any.get()!.n === 0;
    for (const channel of await this.catalog.channels()) {
      let listing;
      try {
        listing = await this.catalog.channel(channel);
      } catch (err) {
        this.log.warn({ err, channel }, 'unreadable channel file skipped');
        continue;
      }
      if (!listing) continue;
      const versions = listing.releases.map((r) => r.version);
      const fresh: string[] = [];
      for (const v of versions) {
        if (this.q.known.get(channel, v)!.n > 0) continue;
        if (!(await this.catalog.hasRelease(v))) continue; // listed before its manifest landed: next scan
        this.q.add.run(channel, v, Date.now());
        fresh.push(v);
      }
      // On the very first scan everything is "new"; only the newest release needs deltas.
      const targets = firstScan ? fresh.slice(-1) : fresh;
      for (const v of targets) {
        result.newReleases.push({ channel, version: v });
        result.queued.push(...(await this.precomputeFor(channel, v, versions)));
      }
    }
    if (result.newReleases.length > 0) this.log.info(result, 'new releases found');
    return result;
  }

  /** Queues deltas into `to` from the fleet's most common versions, else from the previous K. */
  async precomputeFor(channel: string, to: string, channelVersions?: string[]): Promise<Array<{ from: string; to: string }>> {
    if (this.k <= 0) return [];
    let sources: string[] = [];
    const fleet = this.fleet();
    if (fleet) {
      try {
        const counts = await fleet.versionCounts(channel);
        for (const c of counts) {
          if (sources.length >= this.k) break;
          if (c.version === to || c.devices <= 0) continue;
          try {
            if (compareVersions(c.version, to) >= 0) continue;
          } catch {
            continue; // a device reporting a version string we do not use
          }
          if (await this.catalog.hasRelease(c.version)) sources.push(c.version);
        }
      } catch (err) {
        this.log.warn({ err }, 'fleet version counts unavailable; precomputing from previous releases');
      }
    }
    if (sources.length === 0) {
      const versions = channelVersions ?? (await this.catalog.channel(channel))?.releases.map((r) => r.version) ?? [];
      const older = versions.filter((v) => compareVersions(v, to) < 0);
      sources = older.slice(-this.k).reverse();
    }
    const queued: Array<{ from: string; to: string }> = [];
    for (const from of sources) {
      if (!(await this.catalog.hasRelease(from))) continue;
      await this.deltas.lookup(from, to, { create: true, priority: PRIORITY.precompute });
      queued.push({ from, to });
      await this.alsoQueue?.(from, to).catch((err: unknown) => this.log.warn({ err, from, to }, 'precompute of another delta kind failed'));
    }
    return queued;
  }

  forget(version: string): void {
    this.q.forget.run(version);
  }

  /** Periodic rescan plus a directory watch (inotify) for prompt pick-up of a publish. */
  start(dir: string, intervalMs: number): void {
    const kick = (): void => {
      void this.scan().catch((err) => this.log.error({ err }, 'release rescan failed'));
    };
    if (intervalMs > 0) {
      this.timer = setInterval(kick, intervalMs);
      this.timer.unref();
    }
    try {
      mkdirSync(dir, { recursive: true });
      this.watcher = watch(dir, () => {
        if (this.debounce) clearTimeout(this.debounce);
        this.debounce = setTimeout(kick, 200);
        this.debounce.unref();
      });
      this.watcher.on('error', (err) => this.log.warn({ err }, 'channel directory watch failed; relying on the periodic rescan'));
    } catch (err) {
      this.log.warn({ err }, 'cannot watch the channel directory; relying on the periodic rescan');
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    if (this.debounce) clearTimeout(this.debounce);
    this.watcher?.close();
    await this.scanning?.catch(() => {});
  }
}
