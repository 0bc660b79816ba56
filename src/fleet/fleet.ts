import { IbuError } from '../errors.js';
import { deviceAfterCheckin, isBusy, validateCheckin, validateEvent } from './checkin.js';
import { Enrollment } from './enrollment.js';
import { FleetCache } from './fleet-cache.js';
import { GroupCommitter } from './group-commit.js';
import { Groups, type GroupInput } from './groups.js';
import { newParticipation, participationFromCheckin, participationFromEvent, participationFromLease } from './participation.js';
import {
  BOOT_EVENT_TYPES,
  NOTE_EVENT_TYPES,
  type CheckinRequest,
  type CheckinResponse,
  type DeviceEvent,
  type EnrollRequest,
  type EnrollResponse,
} from './protocol.js';
import type { FleetRepository, ReplicaCoordination } from './repository.js';
import { RebootLeases } from './reboot-leases.js';
import { offeredBy } from './rollout-policy.js';
import { Releases, type ChannelPolicy, type ReleaseInput } from './releases.js';
import { Rollouts, type RolloutView } from './rollouts.js';
import { nextCheckinSeconds } from './schedule.js';
import {
  applySettings,
  DEFAULT_FLEET_CONFIG,
  persistSettings,
  settingsView,
  validateSettings,
  type FleetConfig,
  type FleetSettings,
  type SettingsView,
} from './settings.js';
import {
  stripView,
  type DeviceRecord,
  type DeviceView,
  type GroupRecord,
  type LeaseRecord,
  type ReleaseRecord,
  type RolloutRecord,
  type RolloutSpec,
  type WriteOp,
} from './types.js';
import { nextHop } from './upgrade-path.js';

export type { FleetConfig, FleetSettings } from './settings.js';
export { DEFAULT_FLEET_CONFIG } from './settings.js';
export type { RolloutView } from './rollouts.js';
export { hashToken } from './enrollment.js';

export type DeltaStatusFn = (from: string, to: string) => Promise<string>;

/**
 * The fleet control plane, a façade over its parts: enrollment (enrollment.ts), what a check-in
 * changes (checkin.ts), participation transitions (participation.ts), reboot leases
 * (reboot-leases.ts), settings (settings.ts), groups (groups.ts), releases (releases.ts) and
 * rollouts (rollouts.ts, deciding in rollout-policy.ts). The HTTP layer (src/server/fleet) is a
 * thin shell around it. Small, hot state (releases, rollouts, groups) is cached in memory and
 * written through (fleet-cache.ts loads it); devices are read from the repository on every
 * check-in and written by group commit. On SQLite one server process owns the fleet database and
 * reboot leases are counted in memory. On a repository with `coordination` (PostgreSQL) any number
 * of processes serve one fleet: leases are granted in the database under a lock on their group, a
 * change notice from any process reloads the cached parts, one process at a time evaluates
 * rollouts, and rollout writes are conditional (src/fleet/sql/postgres-coordination.ts;
 * docs/deployment.md).
 */
export class Fleet {
  readonly config: FleetConfig;
  private readonly releases: Releases;
  private readonly rollouts: Rollouts;
  private readonly groups: Groups;
  private readonly leases: RebootLeases;
  private readonly cache: FleetCache;
  private readonly enrollment: Enrollment;
  private readonly committer: GroupCommitter;
  private evaluating: Promise<void> | null = null;
  private readonly counters = { checkins: 0, events: 0, enrollments: 0, downgrades: 0 };
  private readonly coord: ReplicaCoordination | undefined;
  private evaluator = false;

  constructor(
    readonly repo: FleetRepository,
    config: Partial<FleetConfig> = {},
    private readonly deltaStatus?: DeltaStatusFn,
    private readonly clock: () => number = Date.now,
    /** Where a failed background write is reported (the server passes its logger). */
    private readonly onBackgroundError: (err: unknown, what: string) => void = () => {},
  ) {
    this.config = { ...DEFAULT_FLEET_CONFIG, ...config };
    this.coord = repo.coordination;
    this.committer = new GroupCommitter((ops) => repo.writeBatch(ops), this.config.batchMaxOps);
    this.enrollment = new Enrollment(repo, this.committer, this.config, clock);
    this.releases = new Releases(repo, clock);
    this.rollouts = new Rollouts(repo, clock, (channel, version) => this.releases.has(channel, version));
    this.groups = new Groups(repo, this.config);
    this.leases = new RebootLeases(this.coord, this.config, this.committer, onBackgroundError);
    const parts = { config: this.config, releases: this.releases, rollouts: this.rollouts, groups: this.groups, leases: this.leases };
    this.cache = new FleetCache(repo, parts, onBackgroundError);
  }

  /** Counters for /metrics. */
  get stats(): { checkins: number; events: number; enrollments: number; downgrades: number; reloads: number; pauses: number } {
    return { ...this.counters, reloads: this.cache.reloads, pauses: this.rollouts.pauses };
  }

  async start(): Promise<void> {
    await this.repo.init();
    await this.cache.loadSettings();
    await this.cache.reload();
    // With replicas a process starting says nothing about downtime: the evaluator extends deadlines when it takes over (evaluate).
    if (this.coord) await this.coord.listen((topic) => this.cache.onChangeNotice(topic));
    else await this.rollouts.extendDeadlines(this.clock());
  }

  /** Validates and applies run-time settings, then stores them so a restart keeps them. */
  async updateSettings(patch: FleetSettings): Promise<SettingsView> {
    validateSettings(patch, this.config.rolloutDefaults);
    applySettings(this.config, await persistSettings(this.repo, patch));
    return this.settings();
  }

  settings(): SettingsView {
    return settingsView(this.config);
  }

  /** Re-reads the small in-memory state from the repository. */
  reload(): Promise<void> {
    return this.cache.reload();
  }

  async close(): Promise<void> {
    await this.committer.close();
    await this.repo.close();
  }

  get commitStats(): { batches: number; ops: number } {
    return { batches: this.committer.batches, ops: this.committer.ops };
  }

  // ---------------------------------------------------------------- devices

  /** `currentToken`: the device's token, if it sent one (binds a key to a device enrolled before keys). */
  async enroll(req: EnrollRequest, currentToken?: string): Promise<EnrollResponse> {
    const res = await this.enrollment.enroll(req, currentToken);
    this.counters.enrollments++;
    return res;
  }

  /** Looks a device up and checks its token (constant time on the hashes). */
  authenticate(id: string, token: string | undefined): Promise<DeviceView> {
    return this.enrollment.authenticate(id, token);
  }

  preauthorize(ids: string[], group?: string, channel?: string): Promise<number> {
    return this.enrollment.preauthorize(ids, group, channel);
  }

  importFactorySecrets(devices: Array<{ id: string; secretHash: string }>, group?: string, channel?: string): Promise<number> {
    return this.enrollment.importFactorySecrets(devices, group, channel);
  }

  resetIdentity(id: string): Promise<DeviceView> {
    return this.enrollment.resetIdentity(id);
  }

  async checkin(id: string, token: string | undefined, req: CheckinRequest): Promise<CheckinResponse> {
    validateCheckin(req);
    const view = await this.authenticate(id, token);
    const now = this.clock();
    const ops: WriteOp[] = [];
    const { device: d, downgrade } = deviceAfterCheckin(stripView(view), req, now);
    if (downgrade) {
      this.counters.downgrades++;
      ops.push({ kind: 'event', event: downgrade });
    }

    // What this check-in says about the device's current rollout.
    let part = view.participation;
    if (part) {
      const rollout = this.rollouts.find(part.rolloutId);
      const next = rollout ? participationFromCheckin(part, rollout, req, now) : part;
      if (next !== part) {
        part = next;
        ops.push({ kind: 'participation', row: part });
      }
    }

    const hop = nextHop(this.releases.path(d.channel), req.version, (r) => offeredBy(this.rollouts.governing(r.channel, r.version), d, part, req, now));
    if (hop) {
      const rollout = this.rollouts.governing(d.channel, hop.version);
      if (rollout && rollout.state === 'running' && (!part || part.rolloutId !== rollout.id)) {
        part = newParticipation(rollout, d, req.version, now);
        d.rolloutId = rollout.id;
        ops.push({ kind: 'participation', row: part });
      }
    }

    const group = this.groups.get(d.group);
    const window = group?.window ?? null;
    let lease: CheckinResponse['rebootLease'] = { granted: false };
    if (req.wantRebootLease) {
      lease = await this.leases.grant(d, group, now, ops);
      if (lease.granted && part && hop && this.rollouts.find(part.rolloutId)?.version === hop.version) {
        const next = participationFromLease(part, this.silentMs(part.rolloutId), now);
        if (next !== part) {
          part = next;
          ops.push({ kind: 'participation', row: part });
        }
      }
    } else {
      const held = await this.leases.held(id, now);
      if (held) lease = { granted: true, expiresAt: new Date(held.expiresAt).toISOString() };
    }

    let deltaReady = false;
    if (hop && this.deltaStatus) {
      try {
        deltaReady = (await this.deltaStatus(req.version, hop.version)) === 'ready';
      } catch {
        deltaReady = false; // a delta side problem must not fail check-ins: chunks always work
      }
    }

    ops.push({ kind: 'device', device: d });
    await this.committer.submit(ops);
    this.counters.checkins++;

    const base = isBusy(req, lease.granted, part) ? this.config.activeCheckinIntervalSeconds : this.config.checkinIntervalSeconds;
    return {
      target: hop ? { version: hop.version, mandatory: hop.mandatory, manifestUrl: hop.manifestUrl } : null,
      deltaReady,
      window,
      rebootLease: lease,
      nextCheckinSeconds: nextCheckinSeconds(base, this.config.jitter),
    };
  }

  private silentMs(rolloutId: number): number {
    return (this.rollouts.find(rolloutId)?.spec.silentAfterSeconds ?? this.config.rolloutDefaults.silentAfterSeconds) * 1000;
  }

  /** The rollout that governs a release: the newest one for it. */
  rolloutFor(channel: string, version: string): RolloutRecord | undefined {
    return this.rollouts.governing(channel, version);
  }

  async releaseLease(id: string, token: string | undefined): Promise<void> {
    await this.authenticate(id, token);
    const ops: WriteOp[] = [];
    this.leases.drop(id, ops);
    await this.committer.submit(ops);
  }

  async event(id: string, token: string | undefined, ev: DeviceEvent): Promise<void> {
    validateEvent(ev);
    const view = await this.authenticate(id, token);
    const now = this.clock();
    const d = stripView(view);
    const ops: WriteOp[] = [];
    ops.push({
      kind: 'event',
      event: {
        deviceId: id,
        type: ev.type,
        fromVersion: ev.fromVersion,
        toVersion: ev.toVersion,
        at: now,
        errorCode: ev.error?.code ?? null,
        errorMessage: ev.error?.message ?? null,
        method: ev.method ?? null,
      },
    });

    // A boot event flags the device for the dashboard's problems; it is no step of an upgrade.
    const bootEvent = BOOT_EVENT_TYPES.includes(ev.type);
    if (bootEvent && !d.flags.includes(ev.type)) d.flags = [...d.flags, ev.type];
    if (ev.type === 'upgrade-succeeded') d.flags = d.flags.filter((f) => f !== 'bootenv-repaired');
    const note = NOTE_EVENT_TYPES.includes(ev.type);
    // A stuck reboot stays on the problems list until the device's next upgrade starts.
    if (ev.type === 'apply-started') d.flags = d.flags.filter((f) => f !== 'reboot-stuck');
    let part = view.participation && this.rollouts.find(view.participation.rolloutId)?.version === ev.toVersion ? view.participation : null;
    if (bootEvent || note) part = null;
    else if (!part) {
      const rollout = this.rollouts.governing(d.channel, ev.toVersion);
      if (rollout) {
        part = (await this.repo.getParticipation(rollout.id, id)) ?? newParticipation(rollout, d, ev.fromVersion, now);
        d.rolloutId = rollout.id;
      }
    }
    if (part) ops.push({ kind: 'participation', row: participationFromEvent(part, ev, this.silentMs(part.rolloutId), now) });
    if (ev.type !== 'apply-started' && !bootEvent && !note) this.leases.drop(id, ops);
    if (ev.error && !note) {
      d.lastErrorCode = ev.error.code;
      d.lastErrorMessage = ev.error.message;
    }
    ops.push({ kind: 'device', device: d });
    await this.committer.submit(ops);
    this.counters.events++;
  }

  // ---------------------------------------------------------------- releases

  releasesOf(channel?: string): ReleaseRecord[] {
    return this.releases.list(channel);
  }

  async registerRelease(input: ReleaseInput, source: ReleaseRecord['source'] = 'api'): Promise<ReleaseRecord> {
    const { release, added } = await this.releases.register(input, source, { channel: this.config.defaultChannel, manifestUrl: this.config.manifestUrl });
    if (added) {
      // A channel may ask for every new release to start as a staged rollout (no window where it goes to all).
      const { rollout } = await this.releases.policy(release.channel);
      if (rollout && !this.rollouts.governing(release.channel, release.version))
        await this.createRollout({ channel: release.channel, version: release.version, spec: rollout });
    }
    return release;
  }

  setChannelPolicy(channel: string, policy: { rollout?: Partial<RolloutSpec> | null }): Promise<ChannelPolicy> {
    return this.releases.setPolicy(channel, policy, this.config.rolloutDefaults);
  }

  channelPolicy(channel: string): Promise<ChannelPolicy> {
    return this.releases.policy(channel);
  }

  // ---------------------------------------------------------------- rollouts

  async createRollout(input: { channel?: string; version: string; spec?: Partial<RolloutSpec> }): Promise<RolloutRecord> {
    return this.rollouts.create({ ...input, channel: input?.channel ?? this.config.defaultChannel }, this.config.rolloutDefaults);
  }

  rollout(id: number): RolloutRecord {
    return this.rollouts.get(id);
  }

  pause(id: number, reason?: string): Promise<RolloutRecord> {
    return this.rollouts.pause(id, reason);
  }

  resume(id: number): Promise<RolloutRecord> {
    return this.rollouts.resume(id);
  }

  abort(id: number, reason?: string): Promise<RolloutRecord> {
    return this.rollouts.abort(id, reason);
  }

  listRollouts(): RolloutRecord[] {
    return this.rollouts.list();
  }

  /** A rollout with its waves' progress, fresh from the repository (dashboard, CLI). */
  async rolloutView(id: number): Promise<RolloutView> {
    this.rollouts.get(id);
    await this.committer.flush();
    return this.rollouts.view(id);
  }

  /**
   * One evaluation round: mark silent devices, then for each running rollout pause, advance or
   * complete (rollout-policy.ts decides), then return expired leases. The plugin runs it on a
   * timer; tests call it directly.
   */
  async evaluate(): Promise<void> {
    if (this.evaluating) return this.evaluating;
    this.evaluating = (async () => {
      try {
        await this.committer.flush();
        const now = this.clock();
        if (this.coord) {
          if (!(await this.coord.isEvaluator())) {
            this.evaluator = false;
            return;
          }
          // What other processes changed must be seen before deciding (notices may still be in flight).
          await this.rollouts.load();
          if (!this.evaluator) {
            // Taking over: the last evaluator may have been down a while; silence counts afresh.
            this.evaluator = true;
            await this.rollouts.extendDeadlines(now);
          }
          await this.rollouts.evaluate(now);
          await this.leases.expire(now);
          return;
        }
        await this.rollouts.evaluate(now);
        await this.leases.expire(now);
      } finally {
        this.evaluating = null;
      }
    })();
    return this.evaluating;
  }

  async activeLeases(group?: string): Promise<LeaseRecord[]> {
    return this.leases.active(this.clock(), group);
  }

  /** Whether this process evaluates rollouts (always, without replicas). */
  get isEvaluator(): boolean {
    return !this.coord || this.evaluator;
  }

  // ---------------------------------------------------------------- groups, admin reads

  async setGroup(input: GroupInput): Promise<GroupRecord> {
    const g = await this.groups.set(input);
    this.leases.groupChanged(g.name); // a new maxConcurrentReboots may make room
    return g;
  }

  listGroups(): GroupRecord[] {
    return this.groups.list();
  }

  async versionCounts(channel?: string): Promise<Array<{ version: string; devices: number }>> {
    await this.committer.flush();
    return this.repo.versionCounts(channel);
  }

  async devices(after: string, limit: number): Promise<DeviceRecord[]> {
    await this.committer.flush();
    return this.repo.listDevices(after, Math.min(Math.max(1, limit), 10_000));
  }

  async problems(limit: number): Promise<DeviceView[]> {
    await this.committer.flush();
    return this.repo.problemDevices(Math.min(Math.max(1, limit), 1000));
  }

  async device(id: string): Promise<DeviceView> {
    await this.committer.flush();
    const d = await this.repo.getDevice(id);
    if (!d) throw new IbuError('DEVICE_UNKNOWN', `Device ${id} is not enrolled.`);
    return d;
  }
}

export { stripView } from './types.js';
export { emptyStatusCounts } from './rollout-policy.js';
