import { isIbuError } from '../errors.js';
import { channelPath, manifestPath } from '../store/layout.js';
import { compareVersions, isValidVersion } from '../version.js';
import { StoreLayout } from './store-layout.js';

/** How long "no such release" is remembered (ms). */
const MISS_MS = 100;

export interface ChannelRelease {
  version: string;
  [k: string]: unknown;
}

export interface ChannelListing {
  channel: string;
  releases: ChannelRelease[]; // oldest first
}

/**
 * Read-only view of the releases in the release store (the data directory, or an S3 bucket).
 * Everything is read fresh on each call: `ibu release publish` writes the same store while the
 * server runs, and its files appear whole (rename on disk, one PUT on S3), so a fresh read sees
 * either the old file or the new one, never half of it.
 */
export class ReleaseCatalog {
  constructor(readonly layout: StoreLayout) {}

  /**
   * Whether a manifest exists. A yes is remembered for a second (status polls ask about the same
   * two versions thousands of times a second); a no for 100 ms, so a release published a moment
   * ago is seen almost at once, while devices reporting a version this server does not have (the
   * simulator's fleet, a device on a vendor build) do not cost a failed stat each: a stat that
   * fails builds an Error with a stack, and one per check-in took 13 % of the server's CPU in an
   * 80,000-device release day. `forget` drops a version deleted through the admin API.
   */
  async hasRelease(version: string): Promise<boolean> {
    const now = Date.now();
    const seen = this.present.get(version);
    if (seen !== undefined && now - seen < 1000) return true;
    const missed = this.absent.get(version);
    if (missed !== undefined && now - missed < MISS_MS) return false;
    // One look at a time per version: on a loaded machine a stat waits in libuv's pool longer than
    // the memo lasts, and every check-in meanwhile would start its own.
    let look = this.looking.get(version);
    if (!look) {
      look = this.look(version).finally(() => this.looking.delete(version));
      this.looking.set(version, look);
    }
    return look;
  }

  private async look(version: string): Promise<boolean> {
    let ok = false;
    try {
      ok = (await this.layout.releases.statFile(manifestPath(version))) !== undefined;
    } catch {
      ok = false;
    }
    const memo = ok ? this.present : this.absent;
    if (memo.size > 10_000) memo.clear();
    memo.set(version, Date.now());
    if (ok) this.absent.delete(version);
    return ok;
  }

  forget(version: string): void {
    this.present.delete(version);
  }

  private readonly present = new Map<string, number>();
  private readonly absent = new Map<string, number>();
  private readonly looking = new Map<string, Promise<boolean>>();

  async channels(): Promise<string[]> {
    const names = await this.layout.releases.list('channels').catch(() => [] as string[]);
    return names
      .filter((n) => n.endsWith('.json') && !n.startsWith('.'))
      .map((n) => n.slice(0, -5))
      .sort();
  }

  /** A channel's releases, oldest first; undefined when the channel does not exist. */
  async channel(name: string): Promise<ChannelListing | undefined> {
    let text: string;
    try {
      text = Buffer.from(await this.layout.releases.getFile(channelPath(name))).toString('utf8');
    } catch (err) {
      if (isIbuError(err, 'NOT_FOUND')) return undefined;
      throw err;
    }
    return { channel: name, releases: parseChannel(text) };
  }

  /** Every version with a manifest, ascending. */
  async versions(): Promise<string[]> {
    const names = await this.layout.releases.list('releases').catch(() => [] as string[]);
    const out: string[] = [];
    for (const n of names) if (isValidVersion(n) && (await this.hasRelease(n))) out.push(n);
    return out.sort(compareVersions);
  }
}

/**
 * Accepts the channel file as the release side writes it: an object with `releases` (objects
 * with a `version`, or bare strings) or `versions`, or a bare array. Sorted oldest first.
 */
export function parseChannel(text: string): ChannelRelease[] {
  const doc = JSON.parse(text) as unknown;
  const list = Array.isArray(doc)
    ? doc
    : ((doc as { releases?: unknown[]; versions?: unknown[] }).releases ?? (doc as { versions?: unknown[] }).versions ?? []);
  const out: ChannelRelease[] = [];
  for (const r of list) {
    const rel = typeof r === 'string' ? { version: r } : (r as ChannelRelease);
    if (rel && typeof rel.version === 'string' && isValidVersion(rel.version)) out.push(rel);
  }
  return out.sort((a, b) => compareVersions(a.version, b.version));
}
