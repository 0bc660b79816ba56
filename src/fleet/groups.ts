import { IbuError } from '../errors.js';
import { NAME_RE } from './names.js';
import type { MaintenanceWindow } from './protocol.js';
import type { FleetRepository } from './repository.js';
import type { FleetConfig } from './settings.js';
import type { GroupRecord } from './types.js';
import { validateWindow } from './window.js';

export interface GroupInput {
  name: string;
  window?: MaintenanceWindow | null;
  maxConcurrentReboots?: number;
  leaseTtlSeconds?: number;
}

/**
 * The device groups (maintenance window, reboots at once, lease time), kept in memory (every
 * check-in reads its device's group) and written through.
 */
export class Groups {
  private byName = new Map<string, GroupRecord>();

  constructor(
    private readonly repo: FleetRepository,
    /** The fleet's config object: run-time settings change its defaults in place. */
    private readonly config: Pick<FleetConfig, 'defaultMaxConcurrentReboots' | 'defaultLeaseTtlSeconds'>,
  ) {}

  async load(): Promise<void> {
    this.byName = new Map((await this.repo.listGroups()).map((g) => [g.name, g]));
  }

  get(name: string): GroupRecord | undefined {
    return this.byName.get(name);
  }

  list(): GroupRecord[] {
    return [...this.byName.values()];
  }

  /** Creates or updates a group; a partial update keeps what it does not name. */
  async set(input: GroupInput): Promise<GroupRecord> {
    if (typeof input?.name !== 'string' || !NAME_RE.test(input.name))
      throw new IbuError('BAD_REQUEST', 'A group needs a short name of letters, digits, ".", "_" or "-".');
    const prev = this.byName.get(input.name);
    const max = input.maxConcurrentReboots ?? prev?.maxConcurrentReboots ?? this.config.defaultMaxConcurrentReboots;
    const ttl = input.leaseTtlSeconds ?? prev?.leaseTtlSeconds ?? this.config.defaultLeaseTtlSeconds;
    if (!Number.isInteger(max) || max < 0) throw new IbuError('BAD_REQUEST', 'maxConcurrentReboots must be an integer >= 0 (0 = unlimited).');
    if (!Number.isFinite(ttl) || ttl <= 0) throw new IbuError('BAD_REQUEST', 'leaseTtlSeconds must be a positive number of seconds.');
    const g: GroupRecord = {
      name: input.name,
      window: input.window === undefined ? (prev?.window ?? null) : input.window ? validateWindow(input.window) : null,
      maxConcurrentReboots: max,
      leaseTtlSeconds: ttl,
    };
    await this.repo.upsertGroup(g);
    this.byName.set(g.name, g);
    return g;
  }
}
