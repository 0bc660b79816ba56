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
