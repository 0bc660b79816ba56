import { isIbuError } from '../errors.js';
import { channelPath, manifestPath } from '../store/layout.js';
import { compareVersions, isValidVersion } from '../version.js';
import { StoreLayout } from './store-layout.js';

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
   * two versions thousands of times a second); a no is never remembered, so a release published
   * a moment ago is seen at once. `forget` drops a version deleted through the admin API.
   */
  async hasRelease(version: string): Promise<boolean> {
    const now = Date.now();
    const seen = this.present.get(version);
    if (seen !== undefined && now - seen < 1000) return true;
    try {
      const ok = (await this.layout.releases.statFile(manifestPath(version))) !== undefined;
      if (ok) {
        if (this.present.size > 10_000) this.present.clear();
        this.present.set(version, now);
      }
      return ok;
    } catch {
      return false;
    }
  }

  forget(version: string): void {
    this.present.delete(version);
  }

  private readonly present = new Map<string, number>();

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
