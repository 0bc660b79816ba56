import { IbuError } from '../errors.js';
import { isValidVersion } from '../version.js';
import { NAME_RE } from './names.js';
import type { FleetRepository } from './repository.js';
import { resolveRolloutSpec } from './rollout-policy.js';
import type { ReleaseRecord, RolloutSpec } from './types.js';
import { sortReleases } from './upgrade-path.js';

export interface ReleaseInput {
  channel?: string;
  version: string;
  mandatory?: boolean;
  manifestUrl?: string;
}

/** A channel's standing orders: e.g. every new release starts as a staged rollout with this spec. */
export interface ChannelPolicy {
  rollout: RolloutSpec | null;
}

/**
 * The releases of every channel, each channel's list in upgrade-path order, kept in memory
 * (every check-in reads them) and written through; and the channels' policies.
 */
export class Releases {
  private byChannel = new Map<string, ReleaseRecord[]>();
  /** Local writes so far (load() re-reads when one lands during its read). */
  private writes = 0;

  constructor(
    private readonly repo: FleetRepository,
    private readonly clock: () => number,
  ) {}

  async load(): Promise<void> {
    // Built aside and swapped in: a check-in meanwhile sees the old list, never an empty one. A local
    // write that lands during the read (a change notice's reload races the write that sent it)
    // would be lost by a snapshot taken before it, so such a read is taken again.
    for (;;) {
      const seen = this.writes;
      const rows = await this.repo.listReleases();
      if (seen !== this.writes) continue;
      const byChannel = new Map<string, ReleaseRecord[]>();
      for (const r of rows) byChannel.set(r.channel, [...(byChannel.get(r.channel) ?? []), r]);
      for (const [ch, list] of byChannel) byChannel.set(ch, sortReleases(list));
      this.byChannel = byChannel;
      return;
    }
  }

  /** A channel's releases in path order (shared: do not change), or none. */
  path(channel: string): readonly ReleaseRecord[] {
    return this.byChannel.get(channel) ?? [];
  }

  has(channel: string, version: string): boolean {
    return this.path(channel).some((r) => r.version === version);
  }

  /** Copies: one channel's, or every channel's. */
  list(channel?: string): ReleaseRecord[] {
    if (channel !== undefined) return [...this.path(channel)];
    return [...this.byChannel.values()].flat();
  }

  /** Adds a release or updates what the input names; `added` says whether it is new on its channel. */
  async register(
    input: ReleaseInput,
    source: ReleaseRecord['source'],
    defaults: { channel: string; manifestUrl: (v: string) => string },
  ): Promise<{ release: ReleaseRecord; added: boolean }> {
    if (!isValidVersion(String(input?.version)))
      throw new IbuError('VERSION_INVALID', `Invalid version '${String(input?.version)}': use dot-separated numbers with an optional -suffix, e.g. 2026.11.2.`);
    const channel = input.channel ?? defaults.channel;
    if (!NAME_RE.test(channel)) throw new IbuError('BAD_REQUEST', `Invalid channel name '${channel}'.`);
    const list = this.byChannel.get(channel) ?? [];
    const existing = list.find((r) => r.version === input.version);
    const release: ReleaseRecord = {
      channel,
      version: input.version,
      mandatory: input.mandatory ?? existing?.mandatory ?? false,
      manifestUrl: input.manifestUrl ?? existing?.manifestUrl ?? defaults.manifestUrl(input.version),
      createdAt: existing?.createdAt ?? this.clock(),
      source: existing?.source ?? source,
    };
    await this.repo.upsertRelease(release);
    this.writes++;
    const now = this.byChannel.get(channel) ?? [];
    this.byChannel.set(channel, sortReleases([...now.filter((r) => r.version !== release.version), release]));
    return { release, added: !existing };
  }

  async setPolicy(channel: string, policy: { rollout?: Partial<RolloutSpec> | null }, rolloutDefaults: RolloutSpec): Promise<ChannelPolicy> {
    if (!NAME_RE.test(channel)) throw new IbuError('BAD_REQUEST', `Invalid channel name '${channel}'.`);
    const rollout = policy?.rollout ? resolveRolloutSpec(policy.rollout, rolloutDefaults) : null;
    await this.repo.putSetting(`channel:${channel}`, { rollout });
    return { rollout };
  }

  async policy(channel: string): Promise<ChannelPolicy> {
    const p = (await this.repo.getSetting(`channel:${channel}`)) as { rollout?: RolloutSpec | null } | undefined;
    return { rollout: p?.rollout ?? null };
  }
}
