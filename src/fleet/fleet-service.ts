import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { IbuError } from '../errors.js';
import { compareVersions, isValidVersion } from '../version.js';
import { GroupCommitter } from './group-commit.js';
import type {
  CheckinRequest, CheckinResponse, DeviceEvent, DeviceState, EnrollRequest, EnrollResponse, MaintenanceWindow,
} from './protocol.js';
import type { FleetRepository } from './repository.js';
import { DEFAULT_ROLLOUT_SPEC, decide, emptyStatusCounts, resolveRolloutSpec, type RolloutFacts } from './rollout-policy.js';
import { nextCheckinSeconds } from './schedule.js';
import type {
  DeviceRecord, DeviceView, GroupRecord, LeaseRecord, ParticipationStatus, ReleaseRecord, RolloutDevice, RolloutRecord, RolloutSpec, WriteOp,
} from './types.js';
import { nextHop, sortReleases } from './upgrade-path.js';
import { deviceBucket, effectiveWaves, waveOf } from './waves.js';
import { inWindow, validateWindow } from './window.js';

export interface FleetConfig {
  /** Interval between check-ins of an idle device (the server adds +-jitter). */
  checkinIntervalSeconds: number;
  /** Interval while a device has a target or is mid-upgrade, so rollouts move on. */
  activeCheckinIntervalSeconds: number;
  jitter: number;
  /** sha256 of the fleet-wide secret that lets unknown ids enroll (unset: only pre-authorized ids). */
  enrollmentSecretHash?: string;
  /** How often rollouts are evaluated (silent devices, thresholds, waves). */
  evaluateEveryMs: number;
  defaultChannel: string;
  defaultGroup: string;
  defaultLeaseTtlSeconds: number;
  /** Concurrent reboots per group when the group sets none (0 = unlimited). */
  defaultMaxConcurrentReboots: number;
  /** Rollout settings used when a rollout request leaves them out. */
  rolloutDefaults: RolloutSpec;
  manifestUrl: (version: string) => string;
  batchMaxOps: number;
}

export const DEFAULT_FLEET_CONFIG: FleetConfig = {
  checkinIntervalSeconds: 3600,
  activeCheckinIntervalSeconds: 120,
  jitter: 0.2,
  defaultChannel: 'stable',
  defaultGroup: 'default',
  defaultLeaseTtlSeconds: 1800,
  defaultMaxConcurrentReboots: 0,
  rolloutDefaults: DEFAULT_ROLLOUT_SPEC,
  manifestUrl: (v) => `/v1/releases/${encodeURIComponent(v)}/manifest`,
  batchMaxOps: 2000,
  evaluateEveryMs: 2000,
};

/** The part of the config an operator may change at run time (stored in the fleet database). */
export interface FleetSettings {
  checkinIntervalSeconds?: number;
  activeCheckinIntervalSeconds?: number;
  jitter?: number;
  defaultLeaseTtlSeconds?: number;
  defaultMaxConcurrentReboots?: number;
  evaluateEveryMs?: number;
  rolloutDefaults?: Partial<RolloutSpec>;
  /** Write-only: only its sha256 is kept. An empty string turns secret enrollment off. */
  enrollmentSecret?: string;
}

export type DeltaStatusFn = (from: string, to: string) => Promise<string>;

export interface RolloutView extends RolloutRecord {
  waves: Array<{ label: string; devices: number; done: number; open: boolean }>;
  counts: Record<ParticipationStatus, number>;
}

const DEVICE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const STATES: readonly DeviceState[] = ['idle', 'preparing', 'prepared', 'applying', 'trial', 'committed', 'rolled-back', 'failed'];
const EVENT_TYPES = ['prepare-failed', 'apply-started', 'upgrade-succeeded', 'upgrade-failed', 'rolled-back'];

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

function maxVersion(a: string | null, b: string | null): string | null {
  if (!a) return b;
  if (!b) return a;
  return compareVersions(a, b) >= 0 ? a : b;
}

/**
 * The fleet control plane: enrollment, check-ins, events, rollouts, groups, leases. The HTTP
 * layer (src/server/fleet) is a thin shell around this class. Small, hot state (releases,
 * rollouts, groups, leases) lives in memory and is written through; devices are read from the
 * repository on every check-in and written by group commit. One server process owns a fleet
 * database at a time (leases are counted in memory).
 */
export class FleetService {
  readonly config: FleetConfig;
  private releases = new Map<string, ReleaseRecord[]>(); // channel -> sorted
  private rollouts = new Map<number, RolloutRecord>();
  private groups = new Map<string, GroupRecord>();
  private leases = new Map<string, LeaseRecord>();
  /** Leases in the map per group, expired ones included until dropped: an upper bound of the active ones. */
  private leaseCount = new Map<string, number>();
  /** Per group: known full until this time (the earliest expiry), unless a lease leaves it first. */
  private fullUntil = new Map<string, number>();
  private committer: GroupCommitter;
  private evaluating: Promise<void> | null = null;
  /** Counters for /metrics. */
  readonly stats = { checkins: 0, events: 0, enrollments: 0, downgrades: 0, pauses: 0 };

  constructor(
    readonly repo: FleetRepository,
    config: Partial<FleetConfig> = {},
    private readonly deltaStatus?: DeltaStatusFn,
    private readonly clock: () => number = Date.now,
  ) {
    this.config = { ...DEFAULT_FLEET_CONFIG, ...config };
    this.committer = new GroupCommitter((ops) => repo.writeBatch(ops), this.config.batchMaxOps);
  }

  async start(): Promise<void> {
    await this.repo.init();
    const saved = (await this.repo.getSetting('fleet')) as FleetSettings | undefined;
    if (saved) this.applySettings(saved);
    await this.reload();
    // While the server was down no device could check in: silence is counted afresh from now.
    const now = this.clock();
    for (const r of this.rollouts.values()) {
      if (r.state === 'running' || r.state === 'paused') await this.repo.extendDeadlines(r.id, now + r.spec.silentAfterSeconds * 1000);
    }
  }

  /** Validates and applies run-time settings, then stores them so a restart keeps them. */
  async updateSettings(patch: FleetSettings): Promise<FleetSettings> {
    const problems: string[] = [];
    const pos = (k: keyof FleetSettings, allowZero = false) => {
      const v = patch[k];
      if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0))) problems.push(`${k} must be a ${allowZero ? 'non-negative' : 'positive'} number`);
    };
    pos('checkinIntervalSeconds');
    pos('activeCheckinIntervalSeconds');
    pos('defaultLeaseTtlSeconds');
    pos('defaultMaxConcurrentReboots', true);
    pos('evaluateEveryMs');
    if (patch.jitter !== undefined && !(typeof patch.jitter === 'number' && patch.jitter >= 0 && patch.jitter < 1)) problems.push('jitter must be a number in [0, 1)');
    if (patch.enrollmentSecret !== undefined && typeof patch.enrollmentSecret !== 'string') problems.push('enrollmentSecret must be a string');
    if (problems.length) throw new IbuError('CONFIG_INVALID', `The fleet settings are invalid: ${problems.join('; ')}.`, { details: { problems } });
    if (patch.rolloutDefaults) resolveRolloutSpec(patch.rolloutDefaults, this.config.rolloutDefaults);
    const saved = ((await this.repo.getSetting('fleet')) as FleetSettings | undefined) ?? {};
    const next: FleetSettings & { enrollmentSecretHash?: string } = { ...saved, ...patch };
    if (patch.enrollmentSecret !== undefined) {
      delete next.enrollmentSecret;
      next.enrollmentSecretHash = patch.enrollmentSecret === '' ? undefined : hashToken(patch.enrollmentSecret);
    }
    await this.repo.putSetting('fleet', next);
    this.applySettings(next);
    return this.settings();
  }

  private applySettings(s: FleetSettings & { enrollmentSecretHash?: string }): void {
    const { rolloutDefaults, enrollmentSecret: _secret, enrollmentSecretHash, ...rest } = s;
    Object.assign(this.config, rest);
    if (rolloutDefaults) this.config.rolloutDefaults = resolveRolloutSpec(rolloutDefaults, DEFAULT_ROLLOUT_SPEC);
    if ('enrollmentSecretHash' in s) this.config.enrollmentSecretHash = enrollmentSecretHash;
  }

  settings(): FleetSettings & { enrollmentSecretSet: boolean } {
    const c = this.config;
    return {
      checkinIntervalSeconds: c.checkinIntervalSeconds, activeCheckinIntervalSeconds: c.activeCheckinIntervalSeconds, jitter: c.jitter,
      defaultLeaseTtlSeconds: c.defaultLeaseTtlSeconds, defaultMaxConcurrentReboots: c.defaultMaxConcurrentReboots, evaluateEveryMs: c.evaluateEveryMs,
      rolloutDefaults: c.rolloutDefaults, enrollmentSecretSet: Boolean(c.enrollmentSecretHash),
    };
  }

  /** Re-reads the small in-memory state from the repository. */
  async reload(): Promise<void> {
    this.releases.clear();
    for (const r of await this.repo.listReleases()) {
      const list = this.releases.get(r.channel) ?? [];
      list.push(r);
      this.releases.set(r.channel, list);
    }
    for (const [ch, list] of this.releases) this.releases.set(ch, sortReleases(list));
    this.rollouts = new Map((await this.repo.listRollouts()).map((r) => [r.id, r]));
    this.groups = new Map((await this.repo.listGroups()).map((g) => [g.name, g]));
    this.leases = new Map((await this.repo.listLeases()).map((l) => [l.deviceId, l]));
    this.leaseCount.clear();
    this.fullUntil.clear();
    for (const l of this.leases.values()) this.leaseCount.set(l.group, (this.leaseCount.get(l.group) ?? 0) + 1);
  }

  async close(): Promise<void> {
    await this.committer.close();
    await this.repo.close();
  }

  get commitStats(): { batches: number; ops: number } {
    return { batches: this.committer.batches, ops: this.committer.ops };
  }

  // ---------------------------------------------------------------- devices

  async enroll(req: EnrollRequest): Promise<EnrollResponse> {
    if (typeof req?.deviceId !== 'string' || !DEVICE_ID_RE.test(req.deviceId)) {
      throw new IbuError('BAD_REQUEST', 'deviceId must be 1-128 characters of letters, digits, ".", "_", ":" or "-", starting with a letter or digit.');
    }
    const pre = await this.repo.getPreauthorized(req.deviceId);
    let group: string;
    let channel: string;
    if (pre) {
      group = pre.group;
      channel = pre.channel;
    } else {
      const want = this.config.enrollmentSecretHash;
      if (!want || typeof req.enrollmentSecret !== 'string' || !sameHash(hashToken(req.enrollmentSecret), want)) {
        throw new IbuError('UNAUTHORIZED', `Device ${req.deviceId} is not pre-authorized and no valid enrollment secret was given; pre-authorize it (POST /v1/admin/devices/preauthorize) or configure the enrollment secret.`);
      }
      group = req.group ?? this.config.defaultGroup;
      channel = req.channel ?? this.config.defaultChannel;
    }
    if (!NAME_RE.test(group) || !NAME_RE.test(channel)) throw new IbuError('BAD_REQUEST', 'group and channel must be short names of letters, digits, ".", "_" or "-".');
    const token = randomBytes(32).toString('base64url');
    const existing = await this.repo.getDevice(req.deviceId);
    // Re-enrolling rotates the token and keeps the device's history.
    const device: DeviceRecord = existing
      ? { ...stripView(existing), tokenHash: hashToken(token), group, channel }
      : {
        id: req.deviceId, tokenHash: hashToken(token), group, channel, bucket: deviceBucket(req.deviceId), version: null, state: null,
        trial: false, committedVersion: null, maxCommitted: null, preparedVersion: null, freeBytes: null, lastErrorCode: null,
        lastErrorMessage: null, lastCheckin: null, checkins: 0, flags: [], enrolledAt: this.clock(), rolloutId: null,
      };
    await this.committer.submit([{ kind: 'device', device }]);
    this.stats.enrollments++;
    return { deviceId: req.deviceId, token };
  }

  /** Looks a device up and checks its token (constant time on the hashes). */
  async authenticate(id: string, token: string | undefined): Promise<DeviceView> {
    const d = await this.repo.getDevice(id);
    if (!d) throw new IbuError('DEVICE_UNKNOWN', `Device ${id} is not enrolled; enroll it first (POST /v1/devices/enroll).`);
    if (!token || !sameHash(hashToken(token), d.tokenHash)) {
      throw new IbuError('UNAUTHORIZED', `The token for device ${id} is wrong; re-enroll the device to get a new one.`);
    }
    return d;
  }

  async checkin(id: string, token: string | undefined, req: CheckinRequest): Promise<CheckinResponse> {
    validateCheckin(req);
    const view = await this.authenticate(id, token);
    const now = this.clock();
    const ops: WriteOp[] = [];
    const d = stripView(view);

    // Anti-downgrade: a device whose committed version went below the highest it ever
    // committed was flashed or rolled back by hand; flag it for the operator.
    const committed = req.committedVersion ?? (req.trial ? null : req.version);
    if (committed && d.maxCommitted && compareVersions(committed, d.maxCommitted) < 0 && !d.flags.includes('downgraded')) {
      d.flags = [...d.flags, 'downgraded'];
      this.stats.downgrades++;
      ops.push({ kind: 'event', event: { deviceId: id, type: 'downgrade-detected', fromVersion: d.maxCommitted, toVersion: committed, at: now, errorCode: 'VERSION_DOWNGRADE', errorMessage: `reported committed version ${committed} is below ${d.maxCommitted}, committed before` } });
    }
    d.maxCommitted = maxVersion(d.maxCommitted, committed);

    // What this check-in says about the device's current rollout.
    let part = view.participation;
    if (part) {
      const rollout = this.rollouts.get(part.rolloutId);
      const next = rollout ? this.participationFromCheckin(part, rollout, req, now) : part;
      if (next !== part) {
        part = next;
        ops.push({ kind: 'participation', row: part });
      }
    }

    const releases = this.releases.get(d.channel) ?? [];
    const hop = nextHop(releases, req.version, (r) => this.offered(r, d, part, req));
    if (hop) {
      const rollout = this.rolloutFor(d.channel, hop.version);
      if (rollout && rollout.state === 'running' && (!part || part.rolloutId !== rollout.id)) {
        part = {
          rolloutId: rollout.id, deviceId: id, wave: Math.max(0, waveOf(effectiveWaves(rollout.spec), d.bucket, d.group)), status: 'targeted',
          fromVersion: req.version, updatedAt: now, deadline: null, errorCode: null, errorMessage: null,
        };
        d.rolloutId = rollout.id;
        ops.push({ kind: 'participation', row: part });
      }
    }

    const group = this.groups.get(d.group);
    const window = group?.window ?? null;
    let lease: CheckinResponse['rebootLease'] = { granted: false };
    const held = this.leases.get(id);
    if (req.wantRebootLease) {
      lease = this.grantLease(d, group, now, ops);
      if (lease.granted && part && part.status === 'targeted' && hop && this.rollouts.get(part.rolloutId)?.version === hop.version) {
        // From here on the device is expected to reboot and come back; silence now counts.
        part = { ...part, status: 'applying', updatedAt: now, deadline: now + this.silentMs(part.rolloutId) };
        ops.push({ kind: 'participation', row: part });
      }
    } else if (held && held.expiresAt > now) lease = { granted: true, expiresAt: new Date(held.expiresAt).toISOString() };

    let deltaReady = false;
    if (hop && this.deltaStatus) {
      try {
        deltaReady = (await this.deltaStatus(req.version, hop.version)) === 'ready';
      } catch {
        deltaReady = false; // a delta side problem must not fail check-ins: chunks always work
      }
    }

    d.version = req.version;
    d.state = req.state;
    d.trial = req.trial;
    d.committedVersion = req.committedVersion ?? (req.trial ? d.committedVersion : req.version);
    d.preparedVersion = req.preparedVersion ?? null;
    d.freeBytes = req.freeBytes ?? d.freeBytes;
    if (req.lastError !== undefined) {
      d.lastErrorCode = req.lastError?.code ?? null;
      d.lastErrorMessage = req.lastError?.message ?? null;
    }
    d.lastCheckin = now;
    d.checkins += 1;
    ops.push({ kind: 'device', device: d });
    await this.committer.submit(ops);
    this.stats.checkins++;

    // Short interval only while the device waits for a lease or is mid-upgrade: a device with a
    // fresh target prepares first and calls back by itself when it wants to reboot.
    // A device refused a lease waits a regular interval (polling fast would only add load).
    const busy = (req.state === 'prepared' && (!req.wantRebootLease || lease.granted)) || req.state === 'applying' || req.state === 'trial' || req.trial
      || (part !== null && (part.status === 'applying' || part.status === 'trial'));
    const base = busy ? this.config.activeCheckinIntervalSeconds : this.config.checkinIntervalSeconds;
    return {
      target: hop ? { version: hop.version, mandatory: hop.mandatory, manifestUrl: hop.manifestUrl } : null,
      deltaReady,
      window,
      rebootLease: lease,
      nextCheckinSeconds: nextCheckinSeconds(base, this.config.jitter),
    };
  }

  /** A check-in's effect on the device's participation in a rollout (pure, returns the same row when nothing changes). */
  private participationFromCheckin(p: RolloutDevice, r: RolloutRecord, req: CheckinRequest, now: number): RolloutDevice {
    const cmp = compareVersions(req.version, r.version);
    let status: ParticipationStatus = p.status;
    let deadline = p.deadline;
    let errorCode = p.errorCode;
    let errorMessage = p.errorMessage;
    if (cmp >= 0) status = req.trial ? 'trial' : 'succeeded';
    else if (req.state === 'applying' && (p.status === 'applying' || p.status === 'silent')) {
      // Alive before its reboot: it still owes us a check-in after it.
      status = 'applying';
      deadline = now + r.spec.silentAfterSeconds * 1000;
    } else if ((p.status === 'applying' || p.status === 'trial' || p.status === 'silent') && !req.trial && req.version === p.fromVersion) {
      status = 'rolled-back'; // it rebooted and came back on the old image
      errorCode = req.lastError?.code ?? 'ROLLED_BACK';
      errorMessage = req.lastError?.message ?? `came back on ${req.version} after applying ${r.version}`;
    } else if (req.state === 'failed' && p.status === 'targeted') {
      status = 'failed';
      errorCode = req.lastError?.code ?? 'FAILED';
      errorMessage = req.lastError?.message ?? 'the device reported state failed';
    } else if (req.state === 'rolled-back' && p.status !== 'rolled-back') {
      status = 'rolled-back';
      errorCode = req.lastError?.code ?? 'ROLLED_BACK';
      errorMessage = req.lastError?.message ?? 'the device reported state rolled-back';
    }
    if (status === p.status && deadline === p.deadline) return p;
    if (status === 'succeeded' || status === 'trial') {
      errorCode = null;
      errorMessage = null;
    }
    return { ...p, status, deadline: status === 'applying' ? deadline : null, updatedAt: now, errorCode, errorMessage };
  }

  /** Whether release r is offered to this device now, by its rollout. */
  private offered(r: ReleaseRecord, d: DeviceRecord, part: RolloutDevice | null, req: CheckinRequest): boolean {
    const rollout = this.rolloutFor(r.channel, r.version);
    if (!rollout) return true; // a release without a rollout goes to everyone (see docs/fleet.md)
    switch (rollout.state) {
      case 'completed':
        return true;
      case 'aborted':
        return false;
      case 'running': {
        const w = waveOf(effectiveWaves(rollout.spec), d.bucket, d.group);
        return w >= 0 && w <= rollout.wave;
      }
      case 'paused':
        // Devices already past the point of no return finish; nobody new starts.
        return (part?.rolloutId === rollout.id && (part.status === 'applying' || part.status === 'trial')) || (req.trial && req.version === r.version);
    }
  }

  private silentMs(rolloutId: number): number {
    return (this.rollouts.get(rolloutId)?.spec.silentAfterSeconds ?? this.config.rolloutDefaults.silentAfterSeconds) * 1000;
  }

  /** The rollout that governs a release: the newest one for it. */
  rolloutFor(channel: string, version: string): RolloutRecord | undefined {
    let best: RolloutRecord | undefined;
    for (const r of this.rollouts.values()) if (r.channel === channel && r.version === version && (!best || r.id > best.id)) best = r;
    return best;
  }

  private grantLease(d: DeviceRecord, group: GroupRecord | undefined, now: number, ops: WriteOp[]): CheckinResponse['rebootLease'] {
    const held = this.leases.get(d.id);
    if (held && held.expiresAt > now) return { granted: true, expiresAt: new Date(held.expiresAt).toISOString() };
    if (!inWindow(group?.window ?? null, new Date(now))) return { granted: false };
    const max = group ? group.maxConcurrentReboots : this.config.defaultMaxConcurrentReboots;
    if (max > 0 && (this.leaseCount.get(d.group) ?? 0) >= max) {
      // Counting is O(leases), so it runs only when the group may be full, and then at most once
      // per expiry or release: when a wave opens, tens of thousands of devices ask while 8,000
      // leases are out, and a scan per check-in stalled the event loop (docs/fleet.md).
      if (now < (this.fullUntil.get(d.group) ?? 0)) return { granted: false };
      let active = 0;
      let earliest = Number.POSITIVE_INFINITY;
      for (const l of [...this.leases.values()]) {
        if (l.group !== d.group) continue;
        if (l.expiresAt <= now) this.dropLease(l.deviceId, ops);
        else {
          active++;
          earliest = Math.min(earliest, l.expiresAt);
        }
      }
      if (active >= max) {
        this.fullUntil.set(d.group, earliest);
        return { granted: false };
      }
    }
    const ttl = (group?.leaseTtlSeconds ?? this.config.defaultLeaseTtlSeconds) * 1000;
    const lease: LeaseRecord = { deviceId: d.id, group: d.group, expiresAt: now + ttl };
    const prev = this.leases.get(d.id);
    if (prev) this.forgetLease(prev);
    this.leases.set(d.id, lease);
    this.leaseCount.set(d.group, (this.leaseCount.get(d.group) ?? 0) + 1);
    ops.push({ kind: 'lease', lease });
    return { granted: true, expiresAt: new Date(lease.expiresAt).toISOString() };
  }

  async releaseLease(id: string, token: string | undefined): Promise<void> {
    await this.authenticate(id, token);
    const ops: WriteOp[] = [];
    this.dropLease(id, ops);
    await this.committer.submit(ops);
  }

  private dropLease(id: string, ops: WriteOp[]): void {
    const l = this.leases.get(id);
    if (!l) return;
    this.leases.delete(id);
    this.forgetLease(l);
    ops.push({ kind: 'lease-delete', deviceId: id });
  }

  /** Bookkeeping for a lease leaving the map (or being replaced): its group has room again. */
  private forgetLease(l: LeaseRecord): void {
    this.leaseCount.set(l.group, Math.max(0, (this.leaseCount.get(l.group) ?? 0) - 1));
    this.fullUntil.delete(l.group);
  }

  async event(id: string, token: string | undefined, ev: DeviceEvent): Promise<void> {
    if (!ev || !EVENT_TYPES.includes(ev.type)) throw new IbuError('BAD_REQUEST', `Event type must be one of ${EVENT_TYPES.join(', ')}.`);
    if (!isValidVersion(String(ev.fromVersion)) || !isValidVersion(String(ev.toVersion))) throw new IbuError('BAD_REQUEST', 'fromVersion and toVersion must be valid versions such as 2026.11.2.');
    const view = await this.authenticate(id, token);
    const now = this.clock();
    const d = stripView(view);
    const ops: WriteOp[] = [];
    ops.push({ kind: 'event', event: { deviceId: id, type: ev.type, fromVersion: ev.fromVersion, toVersion: ev.toVersion, at: now, errorCode: ev.error?.code ?? null, errorMessage: ev.error?.message ?? null } });

    let part = view.participation && this.rollouts.get(view.participation.rolloutId)?.version === ev.toVersion ? view.participation : null;
    if (!part) {
      const rollout = this.rolloutFor(d.channel, ev.toVersion);
      if (rollout) {
        part = (await this.repo.getParticipation(rollout.id, id)) ?? {
          rolloutId: rollout.id, deviceId: id, wave: Math.max(0, waveOf(effectiveWaves(rollout.spec), d.bucket, d.group)), status: 'targeted',
          fromVersion: ev.fromVersion, updatedAt: now, deadline: null, errorCode: null, errorMessage: null,
        };
        d.rolloutId = rollout.id;
      }
    }
    if (part) {
      const errorCode = ev.error?.code ?? null;
      const errorMessage = ev.error?.message ?? null;
      switch (ev.type) {
        case 'apply-started':
          part = { ...part, status: 'applying', deadline: now + this.silentMs(part.rolloutId), updatedAt: now };
          break;
        case 'upgrade-succeeded':
          part = { ...part, status: 'succeeded', deadline: null, updatedAt: now, errorCode: null, errorMessage: null };
          break;
        case 'upgrade-failed':
        case 'prepare-failed':
          part = { ...part, status: 'failed', deadline: null, updatedAt: now, errorCode: errorCode ?? 'FAILED', errorMessage: errorMessage ?? `${ev.type} without details` };
          break;
        case 'rolled-back':
          part = { ...part, status: 'rolled-back', deadline: null, updatedAt: now, errorCode: errorCode ?? 'ROLLED_BACK', errorMessage: errorMessage ?? `rolled back from ${ev.toVersion}` };
          break;
      }
      ops.push({ kind: 'participation', row: part });
    }
    if (ev.type !== 'apply-started') this.dropLease(id, ops);
    if (ev.error) {
      d.lastErrorCode = ev.error.code;
      d.lastErrorMessage = ev.error.message;
    }
    ops.push({ kind: 'device', device: d });
    await this.committer.submit(ops);
    this.stats.events++;
  }

  // ---------------------------------------------------------------- releases

  releasesOf(channel?: string): ReleaseRecord[] {
    if (channel !== undefined) return [...(this.releases.get(channel) ?? [])];
    return [...this.releases.values()].flat();
  }

  async registerRelease(input: { channel?: string; version: string; mandatory?: boolean; manifestUrl?: string }, source: ReleaseRecord['source'] = 'api'): Promise<ReleaseRecord> {
    if (!isValidVersion(String(input?.version))) throw new IbuError('VERSION_INVALID', `Invalid version '${String(input?.version)}': use dot-separated numbers with an optional -suffix, e.g. 2026.11.2.`);
    const channel = input.channel ?? this.config.defaultChannel;
    if (!NAME_RE.test(channel)) throw new IbuError('BAD_REQUEST', `Invalid channel name '${channel}'.`);
    const list = this.releases.get(channel) ?? [];
    const existing = list.find((r) => r.version === input.version);
    const rec: ReleaseRecord = {
      channel,
      version: input.version,
      mandatory: input.mandatory ?? existing?.mandatory ?? false,
      manifestUrl: input.manifestUrl ?? existing?.manifestUrl ?? this.config.manifestUrl(input.version),
      createdAt: existing?.createdAt ?? this.clock(),
      source: existing?.source ?? source,
    };
    await this.repo.upsertRelease(rec);
    this.releases.set(channel, sortReleases([...list.filter((r) => r.version !== rec.version), rec]));
    if (!existing) {
      // A channel may ask for every new release to start as a staged rollout (no window where it goes to all).
      const policy = (await this.repo.getSetting(`channel:${channel}`)) as { rollout?: Partial<RolloutSpec> | null } | undefined;
      if (policy?.rollout && !this.rolloutFor(channel, rec.version)) await this.createRollout({ channel, version: rec.version, spec: policy.rollout });
    }
    return rec;
  }

  async setChannelPolicy(channel: string, policy: { rollout?: Partial<RolloutSpec> | null }): Promise<{ rollout: RolloutSpec | null }> {
    if (!NAME_RE.test(channel)) throw new IbuError('BAD_REQUEST', `Invalid channel name '${channel}'.`);
    const rollout = policy?.rollout ? resolveRolloutSpec(policy.rollout, this.config.rolloutDefaults) : null;
    await this.repo.putSetting(`channel:${channel}`, { rollout });
    return { rollout };
  }

  async channelPolicy(channel: string): Promise<{ rollout: RolloutSpec | null }> {
    const p = (await this.repo.getSetting(`channel:${channel}`)) as { rollout?: RolloutSpec | null } | undefined;
    return { rollout: p?.rollout ?? null };
  }

  // ---------------------------------------------------------------- rollouts

  async createRollout(input: { channel?: string; version: string; spec?: Partial<RolloutSpec> }): Promise<RolloutRecord> {
    const channel = input?.channel ?? this.config.defaultChannel;
    if (!isValidVersion(String(input?.version))) throw new IbuError('VERSION_INVALID', `Invalid version '${String(input?.version)}'.`);
    if (!(this.releases.get(channel) ?? []).some((r) => r.version === input.version)) {
      throw new IbuError('RELEASE_NOT_FOUND', `Release ${input.version} is not known on channel '${channel}'; publish it to the data directory or register it (POST /v1/admin/releases) first.`);
    }
    const prev = this.rolloutFor(channel, input.version);
    if (prev && prev.state !== 'aborted') throw new IbuError('CONFLICT', `Release ${input.version} already has rollout ${prev.id} (${prev.state}); pause, resume or abort that one.`);
    const spec = resolveRolloutSpec(input.spec, this.config.rolloutDefaults);
    const now = this.clock();
    const rec: Omit<RolloutRecord, 'id'> = {
      channel, version: input.version, spec, state: 'running', wave: 0, waveStartedAt: now, createdAt: now, updatedAt: now, reason: null, baselineBad: 0, baselineStarted: 0,
    };
    const id = await this.repo.insertRollout(rec);
    const full = { ...rec, id };
    this.rollouts.set(id, full);
    return full;
  }

  rollout(id: number): RolloutRecord {
    const r = this.rollouts.get(id);
    if (!r) throw new IbuError('NOT_FOUND', `There is no rollout ${id}; list them with \`ibu rollout list\`.`);
    return r;
  }

  async pause(id: number, reason = 'paused by an operator'): Promise<RolloutRecord> {
    const r = this.rollout(id);
    if (r.state !== 'running') throw new IbuError('CONFLICT', `Rollout ${id} is ${r.state}; only a running rollout can be paused.`);
    return this.save({ ...r, state: 'paused', reason, updatedAt: this.clock() });
  }

  async resume(id: number): Promise<RolloutRecord> {
    const r = this.rollout(id);
    if (r.state !== 'paused') throw new IbuError('CONFLICT', `Rollout ${id} is ${r.state}; only a paused rollout can be resumed.`);
    // The bad outcomes seen so far were looked at by whoever resumes; thresholds count from here.
    const { bad, started } = badStarted(await this.repo.participationCounts(id));
    return this.save({ ...r, state: 'running', reason: null, baselineBad: bad, baselineStarted: started, updatedAt: this.clock() });
  }

  async abort(id: number, reason = 'aborted by an operator'): Promise<RolloutRecord> {
    const r = this.rollout(id);
    if (r.state === 'aborted' || r.state === 'completed') throw new IbuError('CONFLICT', `Rollout ${id} is already ${r.state}.`);
    return this.save({ ...r, state: 'aborted', reason, updatedAt: this.clock() });
  }

  private async save(r: RolloutRecord): Promise<RolloutRecord> {
    await this.repo.updateRollout(r);
    this.rollouts.set(r.id, r);
    return r;
  }

  listRollouts(): RolloutRecord[] {
    return [...this.rollouts.values()].sort((a, b) => b.id - a.id);
  }

  /** A rollout with its waves' progress, fresh from the repository (dashboard, CLI). */
  async rolloutView(id: number): Promise<RolloutView> {
    const r = this.rollout(id);
    await this.committer.flush();
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

  private async waveProgress(r: RolloutRecord, bucketBelow: number, groups: string[]): Promise<{ devices: number; done: number }> {
    let devices = 0;
    let done = 0;
    for (const { version, devices: n } of await this.repo.versionCounts(r.channel, { bucketBelow, groups })) {
      devices += n;
      if (isValidVersion(version) && compareVersions(version, r.version) >= 0) done += n;
    }
    return { devices, done };
  }

  /**
   * One evaluation round: mark silent devices, then for each running rollout pause, advance or
   * complete (rollout-policy.ts decides). The plugin runs it on a timer; tests call it directly.
   */
  async evaluate(): Promise<void> {
    if (this.evaluating) return this.evaluating;
    this.evaluating = (async () => {
      try {
        await this.committer.flush();
        const now = this.clock();
        for (const r of [...this.rollouts.values()]) {
          if (r.state !== 'running' && r.state !== 'paused') continue;
          await this.repo.markSilent(r.id, now);
          if (r.state !== 'running') continue;
          const wave = effectiveWaves(r.spec)[r.wave]!;
          const { devices, done } = await this.waveProgress(r, wave.bucketBelow, wave.groups);
          const facts: RolloutFacts = { byStatus: await this.repo.participationCounts(r.id), waveDevices: devices, waveDone: done, now };
          const d = decide(r, facts);
          if (d.kind === 'pause') {
            this.stats.pauses++;
            await this.save({ ...r, state: 'paused', reason: d.reason, updatedAt: now });
          } else if (d.kind === 'advance') await this.save({ ...r, wave: d.wave, waveStartedAt: now, updatedAt: now });
          else if (d.kind === 'complete') await this.save({ ...r, state: 'completed', reason: d.reason, updatedAt: now });
        }
        this.expireLeases(now);
      } finally {
        this.evaluating = null;
      }
    })();
    return this.evaluating;
  }

  private expireLeases(now: number): void {
    const ops: WriteOp[] = [];
    for (const l of [...this.leases.values()]) if (l.expiresAt <= now) this.dropLease(l.deviceId, ops);
    void this.committer.submit(ops).catch(() => {});
  }

  activeLeases(group?: string): LeaseRecord[] {
    const now = this.clock();
    return [...this.leases.values()].filter((l) => l.expiresAt > now && (group === undefined || l.group === group));
  }

  // ---------------------------------------------------------------- groups, admin reads

  async setGroup(input: { name: string; window?: MaintenanceWindow | null; maxConcurrentReboots?: number; leaseTtlSeconds?: number }): Promise<GroupRecord> {
    if (typeof input?.name !== 'string' || !NAME_RE.test(input.name)) throw new IbuError('BAD_REQUEST', 'A group needs a short name of letters, digits, ".", "_" or "-".');
    // A partial update keeps what it does not name.
    const prev = this.groups.get(input.name);
    const max = input.maxConcurrentReboots ?? prev?.maxConcurrentReboots ?? this.config.defaultMaxConcurrentReboots;
    const ttl = input.leaseTtlSeconds ?? prev?.leaseTtlSeconds ?? this.config.defaultLeaseTtlSeconds;
    if (!Number.isInteger(max) || max < 0) throw new IbuError('BAD_REQUEST', 'maxConcurrentReboots must be an integer >= 0 (0 = unlimited).');
    if (!Number.isFinite(ttl) || ttl <= 0) throw new IbuError('BAD_REQUEST', 'leaseTtlSeconds must be a positive number of seconds.');
    const g: GroupRecord = { name: input.name, window: input.window === undefined ? prev?.window ?? null : input.window ? validateWindow(input.window) : null, maxConcurrentReboots: max, leaseTtlSeconds: ttl };
    await this.repo.upsertGroup(g);
    this.groups.set(g.name, g);
    this.fullUntil.delete(g.name); // a new maxConcurrentReboots may make room
    return g;
  }

  listGroups(): GroupRecord[] {
    return [...this.groups.values()];
  }

  async preauthorize(ids: string[], group?: string, channel?: string): Promise<number> {
    if (!Array.isArray(ids) || ids.some((i) => typeof i !== 'string' || !DEVICE_ID_RE.test(i))) throw new IbuError('BAD_REQUEST', 'ids must be a list of device ids (letters, digits, ".", "_", ":", "-").');
    const g = group ?? this.config.defaultGroup;
    const c = channel ?? this.config.defaultChannel;
    if (!NAME_RE.test(g) || !NAME_RE.test(c)) throw new IbuError('BAD_REQUEST', 'group and channel must be short names.');
    await this.repo.addPreauthorized(ids.map((id) => ({ id, group: g, channel: c })));
    return ids.length;
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

function badStarted(c: Record<ParticipationStatus, number>): { bad: number; started: number } {
  const bad = c.failed + c['rolled-back'] + c.silent;
  return { bad, started: bad + c.applying + c.trial + c.succeeded };
}

export function stripView(v: DeviceView): DeviceRecord {
  const { participation: _p, ...d } = v;
  return { ...d, flags: [...d.flags] };
}

function validateCheckin(req: CheckinRequest): void {
  const problems: string[] = [];
  if (!req || typeof req !== 'object') throw new IbuError('BAD_REQUEST', 'A check-in body is a JSON object (see src/fleet/protocol.ts).');
  if (!isValidVersion(String(req.version))) problems.push(`version '${String(req.version)}' is not a valid version`);
  if (!STATES.includes(req.state)) problems.push(`state must be one of ${STATES.join(', ')}`);
  if (typeof req.trial !== 'boolean') problems.push('trial must be true or false');
  for (const k of ['committedVersion', 'preparedVersion'] as const) {
    if (req[k] !== undefined && req[k] !== null && !isValidVersion(String(req[k]))) problems.push(`${k} '${String(req[k])}' is not a valid version`);
  }
  if (problems.length) throw new IbuError('BAD_REQUEST', `The check-in is invalid: ${problems.join('; ')}.`, { details: { problems } });
}

export { emptyStatusCounts };
