import type { Db } from './db.js';
import { onPublishedPath, type Demand } from './delta-admission.js';
import type { ReleaseCatalog } from './release-catalog.js';

/** A pair named by a check-in counts as needed for this long after the last one (devices check in hourly by default). */
export const DEMAND_TTL_MS = 24 * 60 * 60_000;

/** A pair already noted is written again at most this often (every check-in of a fleet names one). */
const REWRITE_MS = 10 * 60_000;

/**
 * Which delta pairs someone needs, the facts behind admission (src/server/delta-admission.ts).
 * With the fleet plugin, a pair is needed when an enrolled device's check-in made it the device's
 * next hop (src/fleet/fleet.ts asks the delta side about exactly that pair); the pairs live in
 * server.sqlite, so a restart does not forget them until every device has checked in again.
 * Without a fleet nothing knows the devices, and the published upgrade path stands in for them.
 */
export class DeltaDemand {
  private readonly q;
  private readonly written = new Map<string, number>();
  private prunedAt = 0;

  constructor(
    db: Db,
    private readonly catalog: Pick<ReleaseCatalog, 'channels' | 'channel'>,
    /** Whether a fleet knows the devices (the fleet plugin is registered). */
    private readonly hasFleet: () => boolean,
    readonly ttlMs = DEMAND_TTL_MS,
  ) {
    this.q = {
      note: db.prepare(
        `INSERT INTO delta_demand (from_version, to_version, noted_at) VALUES (?, ?, ?)
           ON CONFLICT (from_version, to_version) DO UPDATE SET noted_at = excluded.noted_at`,
      ),
      get: db.prepare<[string, string], { noted_at: number }>('SELECT noted_at FROM delta_demand WHERE from_version = ? AND to_version = ?'),
      prune: db.prepare('DELETE FROM delta_demand WHERE noted_at < ?'),
    };
  }

  /**
   * An enrolled device's next hop is from→to. Cheap when repeated: one map look-up. True when
   * the pair was written (new, or refreshed), false when it was noted a moment ago.
   */
  note(from: string, to: string, now = Date.now()): boolean {
    const key = `${from}\u0000${to}`;
    const last = this.written.get(key);
    if (last !== undefined && now - last < REWRITE_MS) return false;
    if (this.written.size > 100_000) this.written.clear();
    this.written.set(key, now);
    this.q.note.run(from, to, now);
    if (now - this.prunedAt > REWRITE_MS) {
      this.prunedAt = now;
      this.q.prune.run(now - this.ttlMs);
    }
    return true;
  }

  /** Whether a check-in named from→to within the TTL (one indexed read; none without a fleet). */
  noted(from: string, to: string, now = Date.now()): boolean {
    if (!this.hasFleet()) return false;
    const row = this.q.get.get(from, to);
    return row !== undefined && now - row.noted_at < this.ttlMs;
  }

  /** Why from→to is wanted (`from` without the ZFS job prefix: a stream serves the same hop). */
  async of(from: string, to: string, now = Date.now()): Promise<Demand> {
    if (this.noted(from, to, now)) return 'device';
    if (this.hasFleet()) return 'none';
    return onPublishedPath(await this.channelLists(now), from, to) ? 'path' : 'none';
  }

  /** The channels' version lists, read at most once a second (a flood of new pairs asks for them on every request). */
  private async channelLists(now: number): Promise<string[][]> {
    if (this.channels && now - this.channels.at < 1000) return this.channels.lists;
    const lists: string[][] = [];
    for (const name of await this.catalog.channels()) {
      const listing = await this.catalog.channel(name).catch(() => undefined);
      if (listing) lists.push(listing.releases.map((r) => r.version));
    }
    this.channels = { at: now, lists };
    return lists;
  }

  private channels: { at: number; lists: string[][] } | undefined;
}
