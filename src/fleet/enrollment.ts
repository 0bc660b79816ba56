import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { IbuError } from '../errors.js';
import type { GroupCommitter } from './group-commit.js';
import { DEVICE_ID_RE, NAME_RE } from './names.js';
import type { EnrollRequest, EnrollResponse } from './protocol.js';
import type { FleetRepository } from './repository.js';
import { stripView, type DeviceRecord, type DeviceView } from './types.js';
import { deviceBucket } from './waves.js';

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** Constant time on the hashes, so neither the token nor its length leaks. */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** The part of the fleet config enrollment reads (changed at run time by the settings). */
export interface EnrollmentConfig {
  /** sha256 of the fleet-wide secret that lets unknown ids enroll (unset: only pre-authorized ids). */
  enrollmentSecretHash?: string;
  defaultGroup: string;
  defaultChannel: string;
}

/** The row of a device enrolled for the first time. */
export function newDevice(id: string, tokenHash: string, group: string, channel: string, now: number): DeviceRecord {
  return {
    id,
    tokenHash,
    group,
    channel,
    bucket: deviceBucket(id),
    version: null,
    state: null,
    trial: false,
    committedVersion: null,
    maxCommitted: null,
    preparedVersion: null,
    freeBytes: null,
    lastErrorCode: null,
    lastErrorMessage: null,
    lastCheckin: null,
    checkins: 0,
    flags: [],
    enrolledAt: now,
    rolloutId: null,
  };
}

/**
 * Who may join the fleet and how a device proves it is itself: pre-authorized ids or the fleet
 * secret get a token, only its hash is stored, and every device call presents it.
 */
export class Enrollment {
  constructor(
    private readonly repo: FleetRepository,
    private readonly committer: GroupCommitter,
    private readonly config: EnrollmentConfig,
    private readonly clock: () => number,
  ) {}

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
        throw new IbuError(
          'UNAUTHORIZED',
          `Device ${req.deviceId} is not pre-authorized and no valid enrollment secret was given; ` +
            'pre-authorize it (POST /v1/admin/fleet/devices/preauthorize) or configure the enrollment secret.',
        );
      }
      group = req.group ?? this.config.defaultGroup;
      channel = req.channel ?? this.config.defaultChannel;
    }
    if (!NAME_RE.test(group) || !NAME_RE.test(channel))
      throw new IbuError('BAD_REQUEST', 'group and channel must be short names of letters, digits, ".", "_" or "-".');
    const token = randomBytes(32).toString('base64url');
    const existing = await this.repo.getDevice(req.deviceId);
    // Re-enrolling rotates the token and keeps the device's history.
    const device: DeviceRecord = existing
      ? { ...stripView(existing), tokenHash: hashToken(token), group, channel }
      : newDevice(req.deviceId, hashToken(token), group, channel, this.clock());
    await this.committer.submit([{ kind: 'device', device }]);
    return { deviceId: req.deviceId, token };
  }

  /** Looks a device up and checks its token. */
  async authenticate(id: string, token: string | undefined): Promise<DeviceView> {
    const d = await this.repo.getDevice(id);
    if (!d) throw new IbuError('DEVICE_UNKNOWN', `Device ${id} is not enrolled; enroll it first (POST /v1/devices/enroll).`);
    if (!token || !sameHash(hashToken(token), d.tokenHash)) {
      throw new IbuError('UNAUTHORIZED', `The token for device ${id} is wrong; re-enroll the device to get a new one.`);
    }
    return d;
  }

  async preauthorize(ids: string[], group?: string, channel?: string): Promise<number> {
    if (!Array.isArray(ids) || ids.some((i) => typeof i !== 'string' || !DEVICE_ID_RE.test(i)))
      throw new IbuError('BAD_REQUEST', 'ids must be a list of device ids (letters, digits, ".", "_", ":", "-").');
    const g = group ?? this.config.defaultGroup;
    const c = channel ?? this.config.defaultChannel;
    if (!NAME_RE.test(g) || !NAME_RE.test(c)) throw new IbuError('BAD_REQUEST', 'group and channel must be short names.');
    await this.repo.addPreauthorized(ids.map((id) => ({ id, group: g, channel: c })));
    return ids.length;
  }
}
