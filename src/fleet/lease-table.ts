import type { LeaseRecord, WriteOp } from './types.js';

/**
 * The reboot leases in memory, written through as WriteOps the caller commits. Counting the
 * active leases of a group is O(leases), so a per-group count (an upper bound: expired leases
 * stay counted until dropped) says when a group may be full, and a "full until" memo (its
 * earliest expiry) keeps a full group from being rescanned on every check-in: when a wave opens,
 * tens of thousands of devices ask while 8,000 leases are out, and a scan per check-in stalled
 * the event loop (docs/fleet.md).
 */
export class LeaseTable {
  private leases = new Map<string, LeaseRecord>();
  private count = new Map<string, number>();
  private fullUntil = new Map<string, number>();

  /** Replaces the table with the leases stored in the repository. */
  load(leases: readonly LeaseRecord[]): void {
    this.leases = new Map(leases.map((l) => [l.deviceId, l]));
    this.count.clear();
    this.fullUntil.clear();
    for (const l of this.leases.values()) this.count.set(l.group, (this.count.get(l.group) ?? 0) + 1);
  }

  /** The device's lease if it is still running at `now`. */
  held(deviceId: string, now: number): LeaseRecord | undefined {
    const l = this.leases.get(deviceId);
    return l && l.expiresAt > now ? l : undefined;
  }

  /**
   * Grants a lease of `ttlMs` unless the group already has `max` active ones (0 = unlimited). A
   * lease the device still holds is returned as it is. Expired leases found while counting are dropped.
   */
  grant(deviceId: string, group: string, max: number, ttlMs: number, now: number, ops: WriteOp[]): LeaseRecord | undefined {
    const held = this.held(deviceId, now);
    if (held) return held;
    if (max > 0 && (this.count.get(group) ?? 0) >= max) {
      if (now < (this.fullUntil.get(group) ?? 0)) return undefined;
      let active = 0;
      let earliest = Number.POSITIVE_INFINITY;
      for (const l of [...this.leases.values()]) {
        if (l.group !== group) continue;
        if (l.expiresAt <= now) this.drop(l.deviceId, ops);
        else {
          active++;
          earliest = Math.min(earliest, l.expiresAt);
        }
      }
      if (active >= max) {
        this.fullUntil.set(group, earliest);
        return undefined;
      }
    }
    const lease: LeaseRecord = { deviceId, group, expiresAt: now + ttlMs };
    const prev = this.leases.get(deviceId);
    if (prev) this.forget(prev);
    this.leases.set(deviceId, lease);
    this.count.set(group, (this.count.get(group) ?? 0) + 1);
    ops.push({ kind: 'lease', lease });
    return lease;
  }

  /** Returns a device's lease (if any) to its group. */
  drop(deviceId: string, ops: WriteOp[]): void {
    const l = this.leases.get(deviceId);
    if (!l) return;
    this.leases.delete(deviceId);
    this.forget(l);
    ops.push({ kind: 'lease-delete', deviceId });
  }

  /** Drops every lease that ran out by `now`. */
  expire(now: number, ops: WriteOp[]): void {
    for (const l of [...this.leases.values()]) if (l.expiresAt <= now) this.drop(l.deviceId, ops);
  }

  /** A group's limit changed: it may have room now. */
  groupChanged(group: string): void {
    this.fullUntil.delete(group);
  }

  active(now: number, group?: string): LeaseRecord[] {
    return [...this.leases.values()].filter((l) => l.expiresAt > now && (group === undefined || l.group === group));
  }

  /** Bookkeeping for a lease leaving the table (or being replaced): its group has room again. */
  private forget(l: LeaseRecord): void {
    this.count.set(l.group, Math.max(0, (this.count.get(l.group) ?? 0) - 1));
    this.fullUntil.delete(l.group);
  }
}
