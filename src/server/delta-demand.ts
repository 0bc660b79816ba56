import { onPublishedPath, type Demand } from './delta-admission.js';
import type { DeltaQueue } from './delta-queue.js';
import type { ReleaseCatalog } from './release-catalog.js';

/** A pair named by a check-in counts as needed for this long after the last one (devices check in hourly by default). */
export const DEMAND_TTL_MS = 24 * 60 * 60_000;

/** A pair already noted is written again at most this often (every check-in of a fleet names one). */
const REWRITE_MS = 10 * 60_000;

/**
 * Which delta pairs someone needs, the facts behind admission (src/server/delta-admission.ts).
 * With the fleet plugin, a pair is needed when an enrolled device's check-in made it the device's
 * next hop (src/fleet/fleet.ts asks the delta side about exactly that pair); the pairs live beside
 * the delta queue (server.sqlite, or PostgreSQL shared by the replicas), so a restart does not
 * forget them and a check-in on one replica counts for a request on another.
 * Without a fleet nothing knows the devices, and the published upgrade path stands in for them.
 */
export class DeltaDemand {
  private readonly written = new Map<string, number>();
  private prunedAt = 0;

  constructor(
    private readonly table: Pick<DeltaQueue, 'noteDemand' | 'demandNotedAt' | 'pruneDemand'>,
    private readonly catalog: Pick<ReleaseCatalog, 'channels' | 'channel'>,
    /** Whether a fleet knows the devices (the fleet plugin is registered). */
    private readonly hasFleet: () => boolean,
    readonly ttlMs = DEMAND_TTL_MS,
  ) {}

  /**
   * An enrolled device's next hop is from→to. Cheap when repeated: one map look-up. True when
   * the pair was written (new, or refreshed), false when it was noted a moment ago.
   */
  async note(from: string, to: string, now = Date.now()): Promise<boolean> {
    const key = `${from}\u0000${to}`;
    const last = this.written.get(key);
    if (last !== undefined && now - last < REWRITE_MS) return false;
    if (this.written.size > 100_000) this.written.clear();
    this.written.set(key, now);
    await this.table.noteDemand(from, to, now);
    if (now - this.prunedAt > REWRITE_MS) {
      this.prunedAt = now;
      await this.table.pruneDemand(now - this.ttlMs);
    }
    return true;
  }

  /** Whether a check-in named from→to within the TTL (one indexed read; none without a fleet). */
  async noted(from: string, to: string, now = Date.now()): Promise<boolean> {
    if (!this.hasFleet()) return false;
    const at = await this.table.demandNotedAt(from, to);
    return at !== undefined && now - at < this.ttlMs;
  }

  /** Why from→to is wanted (`from` without the ZFS job prefix: a stream serves the same hop). */
  async of(from: string, to: string, now = Date.now()): Promise<Demand> {
    if (await this.noted(from, to, now)) return 'device';
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
