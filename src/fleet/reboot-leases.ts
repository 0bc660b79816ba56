import type { GroupCommitter } from './group-commit.js';
import { LeaseTable } from './lease-table.js';
import type { CheckinResponse } from './protocol.js';
import type { FleetRepository, ReplicaCoordination } from './repository.js';
import type { FleetConfig } from './settings.js';
import type { DeviceRecord, GroupRecord, LeaseRecord, WriteOp } from './types.js';
import { inWindow } from './window.js';

/**
 * Where the reboot leases live. With one server process (SQLite) they are counted in memory
 * (lease-table.ts) and written through as WriteOps; with replicas (a repository with
 * `coordination`, PostgreSQL) they are granted in the database under a lock on their group.
 */
export class RebootLeases {
  private readonly table = new LeaseTable();

  constructor(
    private readonly coord: ReplicaCoordination | undefined,
    /** The fleet's config object: run-time settings change its defaults in place. */
    private readonly config: Pick<FleetConfig, 'defaultMaxConcurrentReboots' | 'defaultLeaseTtlSeconds'>,
    private readonly committer: GroupCommitter,
    private readonly onBackgroundError: (err: unknown, what: string) => void,
  ) {}

  /** Reads the leases into memory (with replicas they stay in the database). */
  async load(repo: FleetRepository): Promise<void> {
    if (!this.coord) this.table.load(await repo.listLeases());
  }

  async held(deviceId: string, now: number): Promise<LeaseRecord | undefined> {
    return this.coord ? await this.coord.heldLease(deviceId, now) : this.table.held(deviceId, now);
  }

  /** A lease for `d` if it holds one, or its group is in its window and has room. */
  async grant(d: DeviceRecord, group: GroupRecord | undefined, now: number, ops: WriteOp[]): Promise<CheckinResponse['rebootLease']> {
    const held = this.coord ? undefined : this.table.held(d.id, now);
    if (held) return { granted: true, expiresAt: new Date(held.expiresAt).toISOString() };
    if (!inWindow(group?.window ?? null, new Date(now))) return { granted: false };
    const max = group ? group.maxConcurrentReboots : this.config.defaultMaxConcurrentReboots;
    const ttl = (group?.leaseTtlSeconds ?? this.config.defaultLeaseTtlSeconds) * 1000;
    const lease = this.coord
      ? await this.coord.acquireLease({ deviceId: d.id, group: d.group, expiresAt: now + ttl }, max, now)
      : this.table.grant(d.id, d.group, max, ttl, now, ops);
    return lease ? { granted: true, expiresAt: new Date(lease.expiresAt).toISOString() } : { granted: false };
  }

  drop(deviceId: string, ops: WriteOp[]): void {
    if (this.coord) ops.push({ kind: 'lease-delete', deviceId });
    else this.table.drop(deviceId, ops);
  }

  /**
   * Frees the leases that ran out. In memory the table forgets them at once (their slots are free
   * for the next check-in); the deletes are written in the background so an evaluation round does
   * not wait on the database, and a failed write is reported, not swallowed (the rows stay until
   * the next restart reloads and expires them again).
   */
  async expire(now: number): Promise<void> {
    if (this.coord) {
      await this.coord.expireLeases(now);
      return;
    }
    const ops: WriteOp[] = [];
    this.table.expire(now, ops);
    if (ops.length === 0) return;
    this.committer.submit(ops).catch((err: unknown) => this.onBackgroundError(err, `writing ${ops.length} expired reboot leases`));
  }

  active(now: number, group?: string): Promise<LeaseRecord[]> | LeaseRecord[] {
    return this.coord ? this.coord.activeLeases(now, group) : this.table.active(now, group);
  }

  /** A group's maxConcurrentReboots changed: it may have room now. */
  groupChanged(group: string): void {
    this.table.groupChanged(group);
  }
}
