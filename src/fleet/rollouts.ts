import { IbuError } from '../errors.js';
import { compareVersions, isValidVersion } from '../version.js';
import type { FleetRepository } from './repository.js';
import { badAndStarted, decide, resolveRolloutSpec } from './rollout-policy.js';
import type { ParticipationStatus, RolloutRecord, RolloutSpec } from './types.js';
import { effectiveWaves } from './waves.js';

export interface RolloutView extends RolloutRecord {
  waves: Array<{ label: string; devices: number; done: number; open: boolean }>;
  counts: Record<ParticipationStatus, number>;
}

/**
 * The rollouts: kept in memory (every check-in reads them) and written through. Operators
 * create, pause, resume and abort them; `evaluate` performs what rollout-policy.ts decides.
 */
export class Rollouts {
  private rollouts = new Map<number, RolloutRecord>();
  /** Local writes so far (load() re-reads when one lands during its read). */
  private writes = 0;
  /** Rollouts paused by a threshold (for /metrics). */
  pauses = 0;

  constructor(
    private readonly repo: FleetRepository,
    private readonly clock: () => number,
    /** Whether a release is known on a channel (a rollout needs one). */
    private readonly hasRelease: (channel: string, version: string) => boolean,
  ) {}

  async load(): Promise<void> {
    // A local write landing during the read would be lost by the older snapshot: read again (as Releases.load).
    for (;;) {
      const seen = this.writes;
      const rows = await this.repo.listRollouts();
      if (seen !== this.writes) continue;
      this.rollouts = new Map(rows.map((r) => [r.id, r]));
      return;
    }
  }

  /** While the server was down no device could check in: silence is counted afresh from now. */
  async extendDeadlines(now: number): Promise<void> {
    for (const r of this.rollouts.values()) {
      if (r.state === 'running' || r.state === 'paused') await this.repo.extendDeadlines(r.id, now + r.spec.silentAfterSeconds * 1000);
    }
  }

  get(id: number): RolloutRecord {
    const r = this.rollouts.get(id);
    if (!r) throw new IbuError('NOT_FOUND', `There is no rollout ${id}; list them with \`ibu rollout list\`.`);
    return r;
  }

  find(id: number): RolloutRecord | undefined {
    return this.rollouts.get(id);
  }

  /** The rollout that governs a release: the newest one for it. */
  governing(channel: string, version: string): RolloutRecord | undefined {
    let best: RolloutRecord | undefined;
    for (const r of this.rollouts.values()) if (r.channel === channel && r.version === version && (!best || r.id > best.id)) best = r;
    return best;
  }

  /** Newest first. */
  list(): RolloutRecord[] {
    return [...this.rollouts.values()].sort((a, b) => b.id - a.id);
  }

  async create(input: { channel: string; version: string; spec?: Partial<RolloutSpec> }, defaults: RolloutSpec): Promise<RolloutRecord> {
    const { channel } = input;
    if (!isValidVersion(String(input?.version))) throw new IbuError('VERSION_INVALID', `Invalid version '${String(input?.version)}'.`);
    if (!this.hasRelease(channel, input.version)) {
      throw new IbuError(
        'RELEASE_NOT_FOUND',
        `Release ${input.version} is not known on channel '${channel}'; publish it to the data directory or register it (POST /v1/admin/releases) first.`,
      );
    }
    const prev = this.governing(channel, input.version);
    if (prev && prev.state !== 'aborted')
      throw new IbuError('CONFLICT', `Release ${input.version} already has rollout ${prev.id} (${prev.state}); pause, resume or abort that one.`);
    const spec = resolveRolloutSpec(input.spec, defaults);
    const now = this.clock();
    const rec: Omit<RolloutRecord, 'id'> = {
      channel,
      version: input.version,
      spec,
      state: 'running',
      wave: 0,
      waveStartedAt: now,
      createdAt: now,
      updatedAt: now,
      reason: null,
      baselineBad: 0,
      baselineStarted: 0,
    };
    const coord = this.repo.coordination;
    const id = coord ? await coord.insertRolloutIfNone(rec) : await this.repo.insertRollout(rec);
    const full = { ...rec, id };
    this.writes++;
    this.rollouts.set(id, full);
    return full;
  }

  async pause(id: number, reason = 'paused by an operator'): Promise<RolloutRecord> {
    const r = this.get(id);
    if (r.state !== 'running') throw new IbuError('CONFLICT', `Rollout ${id} is ${r.state}; only a running rollout can be paused.`);
    return this.save({ ...r, state: 'paused', reason, updatedAt: this.clock() }, r);
  }

  async resume(id: number): Promise<RolloutRecord> {
    const r = this.get(id);
    if (r.state !== 'paused') throw new IbuError('CONFLICT', `Rollout ${id} is ${r.state}; only a paused rollout can be resumed.`);
    // The bad outcomes seen so far were looked at by whoever resumes; thresholds count from here.
    const { bad, started } = badAndStarted(await this.repo.participationCounts(id));
    return this.save({ ...r, state: 'running', reason: null, baselineBad: bad, baselineStarted: started, updatedAt: this.clock() }, r);
  }

  async abort(id: number, reason = 'aborted by an operator'): Promise<RolloutRecord> {
    const r = this.get(id);
    if (r.state === 'aborted' || r.state === 'completed') throw new IbuError('CONFLICT', `Rollout ${id} is already ${r.state}.`);
    return this.save({ ...r, state: 'aborted', reason, updatedAt: this.clock() }, r);
  }

  /** A rollout with its waves' progress, read from the repository (flush pending writes first). */
  async view(id: number): Promise<RolloutView> {
    const r = this.get(id);
    const counts = await this.repo.participationCounts(id);
    const waves = [];
    const eff = effectiveWaves(r.spec);
    for (let i = 0; i < eff.length; i++) {
      const w = eff[i]!;
      const { devices, done } = await this.waveProgress(r, w.bucketBelow, w.groups);
      waves.push({ label: w.label, devices, done, open: r.state === 'completed' || i <= r.wave });
    }
    return { ...r, waves, counts };
  }

  /** Marks silent devices, then pauses, advances or completes each running rollout as decide() says. */
  async evaluate(now: number): Promise<void> {
    for (const r of [...this.rollouts.values()]) {
      if (r.state !== 'running' && r.state !== 'paused') continue;
      await this.repo.markSilent(r.id, now);
      if (r.state !== 'running') continue;
      const wave = effectiveWaves(r.spec)[r.wave]!;
      const { devices, done } = await this.waveProgress(r, wave.bucketBelow, wave.groups);
      const d = decide(r, { byStatus: await this.repo.participationCounts(r.id), waveDevices: devices, waveDone: done, now });
      try {
        if (d.kind === 'pause') {
          await this.save({ ...r, state: 'paused', reason: d.reason, updatedAt: now }, r);
          this.pauses++;
        } else if (d.kind === 'advance') await this.save({ ...r, wave: d.wave, waveStartedAt: now, updatedAt: now }, r);
        else if (d.kind === 'complete') await this.save({ ...r, state: 'completed', reason: d.reason, updatedAt: now }, r);
      } catch (err) {
        // An operator changed it on another server meanwhile: the next round decides on the new row.
        if (!(err instanceof IbuError && err.code === 'CONFLICT')) throw err;
      }
    }
  }

  /**
   * Writes a rollout read as `prev`. With replicas the write holds only if nobody changed the row
   * since (else CONFLICT, and the cache is reloaded): a pause on one server and a wave advance on
   * another cannot overwrite each other.
   */
  private async save(r: RolloutRecord, prev: RolloutRecord): Promise<RolloutRecord> {
    const coord = this.repo.coordination;
    if (!coord) await this.repo.updateRollout(r);
    else if (!(await coord.updateRolloutIf(r, prev))) {
      await this.load();
      throw new IbuError('CONFLICT', `Rollout ${r.id} was changed by another server meanwhile; look at it again (ibu rollout status ${r.id}) and retry.`);
    }
    this.writes++;
    this.rollouts.set(r.id, r);
    return r;
  }

  private async waveProgress(r: RolloutRecord, bucketBelow: number, groups: string[]): Promise<{ devices: number; done: number }> {
    let devices = 0;
    let done = 0;
    for (const { version, devices: n } of await this.repo.versionCounts(r.channel, { bucketBelow, groups })) {
      devices += n;
      if (isValidVersion(version) && compareVersions(version, r.version) >= 0) done += n;
    }
    return { devices, done };
  }
}
