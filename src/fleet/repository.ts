import type {
  DeviceRecord,
  DeviceView,
  GroupRecord,
  Preauthorized,
  LeaseRecord,
  ParticipationStatus,
  ReleaseRecord,
  RolloutDevice,
  RolloutRecord,
  WriteOp,
} from './types.js';

/**
 * Where the fleet lives. One interface, two implementations (SQLite embedded, PostgreSQL), one
 * contract test suite run against both (test/fleet/repository.test.ts). Check-in writes arrive
 * through `writeBatch`: many devices' changes in one transaction (group commit).
 */
export interface FleetRepository {
  readonly kind: 'sqlite' | 'postgres';
  /**
   * Present when several server processes may share this database (PostgreSQL): the fleet then
   * keeps nothing authoritative in memory (src/fleet/sql/postgres-coordination.ts). Absent for
   * SQLite, whose file one process owns (src/server/data-lock.ts): leases are counted in memory.
   */
  readonly coordination?: ReplicaCoordination;
  init(): Promise<void>;
  close(): Promise<void>;

  getDevice(id: string): Promise<DeviceView | undefined>;
  writeBatch(ops: readonly WriteOp[]): Promise<void>;
  listDevices(after: string, limit: number): Promise<DeviceRecord[]>;
  deviceCount(): Promise<number>;
  /** Devices whose current participation went bad, or that carry a flag, newest first. */
  problemDevices(limit: number): Promise<DeviceView[]>;

  getPreauthorized(id: string): Promise<Preauthorized | undefined>;
  /** Upserts; a row with a secret hash (re)arms that one-time secret. */
  addPreauthorized(rows: ReadonlyArray<{ id: string; group: string; channel: string; secretHash?: string }>): Promise<void>;
  /** Marks a factory secret used; false when it already was (two enrollments raced for it). */
  claimFactorySecret(id: string, secretHash: string, at: number): Promise<boolean>;

  listReleases(): Promise<ReleaseRecord[]>;
  upsertRelease(r: ReleaseRecord): Promise<void>;

  listRollouts(): Promise<RolloutRecord[]>;
  /** Inserts and returns the new id. */
  insertRollout(r: Omit<RolloutRecord, 'id'>): Promise<number>;
  updateRollout(r: RolloutRecord): Promise<void>;
  getParticipation(rolloutId: number, deviceId: string): Promise<RolloutDevice | undefined>;
  participationCounts(rolloutId: number): Promise<Record<ParticipationStatus, number>>;
  /** Marks devices silent that began applying and did not check in before their deadline. */
  markSilent(rolloutId: number, now: number): Promise<number>;
  /** Moves every 'applying' deadline of a rollout to at least `deadline` (after server downtime). */
  extendDeadlines(rolloutId: number, deadline: number): Promise<number>;

  /**
   * Version histogram of a channel (all devices, or those in a wave: bucket below N or in groups).
   * For a wave, devices that never reported a version are included with version ''.
   */
  versionCounts(channel?: string, wave?: { bucketBelow: number; groups: string[] }): Promise<Array<{ version: string; devices: number }>>;

  listGroups(): Promise<GroupRecord[]>;
  upsertGroup(g: GroupRecord): Promise<void>;
  listLeases(): Promise<LeaseRecord[]>;

  getSetting(key: string): Promise<unknown>;
  putSetting(key: string, value: unknown): Promise<void>;
}

/** What replicas on one database share beyond storage; see PostgresCoordination for how. */
export interface ReplicaCoordination {
  /**
   * Grants `lease` unless its group already has `max` unexpired leases (0 = unlimited), atomically
   * across processes; a lease the device still holds is returned as it is.
   */
  acquireLease(lease: LeaseRecord, max: number, now: number): Promise<LeaseRecord | undefined>;
  heldLease(deviceId: string, now: number): Promise<LeaseRecord | undefined>;
  activeLeases(now: number, group?: string): Promise<LeaseRecord[]>;
  /** Deletes the leases that ran out by `now`. */
  expireLeases(now: number): Promise<number>;
  /** Inserts a rollout unless its release already has one that is not aborted (CONFLICT), atomically across processes. */
  insertRolloutIfNone(r: Omit<RolloutRecord, 'id'>): Promise<number>;
  /** Writes `r` only if the stored row still is `prev` (state, wave, updatedAt); false when another process changed it. */
  updateRolloutIf(r: RolloutRecord, prev: RolloutRecord): Promise<boolean>;
  /** Tells every process that `topic` changed. */
  notify(topic: string): Promise<void>;
  /** `fn` hears every change notice ('releases', 'rollouts', 'groups', 'settings'; '*' after missed ones). */
  listen(fn: (topic: string) => void): Promise<void>;
  /** Whether this process is the one that evaluates rollouts (held until the process or its connection dies). */
  isEvaluator(): Promise<boolean>;
  close(): Promise<void>;
}
