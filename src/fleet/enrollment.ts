import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { IbuError } from '../errors.js';
import type { GroupCommitter } from './group-commit.js';
import { ENROLL_PROOF_WINDOW_MS, verifyEnrollment } from './device-proof.js';
import { DEVICE_ID_RE, NAME_RE } from './names.js';
import type { EnrollRequest, EnrollResponse } from './protocol.js';
import type { FleetRepository } from './repository.js';
import { stripView, type DeviceRecord, type DeviceView, type Preauthorized } from './types.js';
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
    publicKey: null,
    keyProofAt: null,
  };
}

/**
 * Every refusal to enroll or authenticate reads the same, whatever the cause (unknown id, wrong
 * secret, used secret, missing key proof, bad token), so the answers do not tell which ids exist.
 */
const REFUSED =
  'The server does not accept these device credentials. A new device enrolls with its factory secret, a pre-authorization ' +
  '(POST /v1/admin/fleet/devices/preauthorize) or the fleet secret; an enrolled one with its own device key or its token.';
function refused(): IbuError {
  return new IbuError('UNAUTHORIZED', REFUSED);
}
/** Compared against when the id is unknown, so both paths hash and compare. */
const NO_DEVICE_HASH = hashToken('no such device');

/** What an enrollment may do, decided from the stored rows (pure; the effects are in Enrollment). */
export type EnrollDecision = { ok: false } | { ok: true; group: string; channel: string; claimSecret?: string };

export interface EnrollFacts {
  req: EnrollRequest;
  /** The enrolled device, if any. */
  existing: DeviceRecord | undefined;
  pre: Preauthorized | undefined;
  fleetSecretHash: string | undefined;
  defaults: { group: string; channel: string };
  /** The device's current token matched (Authorization header). */
  tokenValid: boolean;
  now: number;
}

/**
 * Who may (re-)enroll an id:
 * - an enrolled id with a bound key: only the holder of that key (a fresh signature: a newer
 *   signing time than the last accepted one, within the window of the server clock);
 * - an enrolled id without a key: if enrolled before keys, its current token; if reset by an
 *   admin (key and token cleared), the credentials of a first enrollment;
 * - a new id: its one-time factory secret if the vendor imported one, else its pre-authorization,
 *   else the fleet secret.
 * Re-enrolling keeps the device's group and channel.
 */
export function decideEnrollment(f: EnrollFacts): EnrollDecision {
  const { req, existing, pre } = f;
  if (!verifyEnrollment(req) || Math.abs(req.at - f.now) > ENROLL_PROOF_WINDOW_MS) return { ok: false };
  if (existing?.publicKey) {
    if (existing.publicKey !== req.publicKey || req.at <= (existing.keyProofAt ?? 0)) return { ok: false };
    return { ok: true, group: existing.group, channel: existing.channel };
  }
  if (existing && f.tokenValid) return { ok: true, group: existing.group, channel: existing.channel };
  // Enrolled before keys and still holding a token: only that token may bind a key to it.
  if (existing && existing.tokenHash !== '') return { ok: false };
  const place = (group: string, channel: string) => (existing ? { group: existing.group, channel: existing.channel } : { group, channel });
  if (pre?.secretHash) {
    // An id with a factory secret enrolls with that secret only, once; the fleet secret cannot claim it.
    const given = typeof req.enrollmentSecret === 'string' ? hashToken(req.enrollmentSecret) : '';
    if (pre.usedAt !== null || !sameHash(given, pre.secretHash)) return { ok: false };
    return { ok: true, ...place(pre.group, pre.channel), claimSecret: pre.secretHash };
  }
  if (pre) return { ok: true, ...place(pre.group, pre.channel) };
  const want = f.fleetSecretHash;
  if (!want || typeof req.enrollmentSecret !== 'string' || !sameHash(hashToken(req.enrollmentSecret), want)) return { ok: false };
  return { ok: true, ...place(req.group ?? f.defaults.group, req.channel ?? f.defaults.channel) };
}

/**
 * Who may join the fleet and how a device proves it is itself: enrollment binds the id to the
 * device's key and issues a token (only its hash is stored) that every device call presents.
 */
export class Enrollment {
  /** Enrollments of one id run one at a time, so two racing requests cannot both bind it. */
  private readonly busy = new Map<string, Promise<unknown>>();

  constructor(
    private readonly repo: FleetRepository,
    private readonly committer: GroupCommitter,
    private readonly config: EnrollmentConfig,
    private readonly clock: () => number,
  ) {}

  async enroll(req: EnrollRequest, currentToken?: string): Promise<EnrollResponse> {
    if (typeof req?.deviceId !== 'string' || !DEVICE_ID_RE.test(req.deviceId)) {
      throw new IbuError('BAD_REQUEST', 'deviceId must be 1-128 characters of letters, digits, ".", "_", ":" or "-", starting with a letter or digit.');
    }
    if (typeof req.publicKey !== 'string' || typeof req.proof !== 'string' || typeof req.at !== 'number') {
      throw new IbuError('BAD_REQUEST', 'Enrollment needs the device key: publicKey, at and proof (see docs/security.md).');
    }
    const id = req.deviceId;
    const prev = this.busy.get(id) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(() => this.enrollNow(req, currentToken));
    this.busy.set(id, run);
    try {
      return await run;
    } finally {
      if (this.busy.get(id) === run) this.busy.delete(id);
    }
  }

  private async enrollNow(req: EnrollRequest, currentToken: string | undefined): Promise<EnrollResponse> {
    await this.committer.flush(); // a queued check-in must not write an older token back over this one
    const existing = await this.repo.getDevice(req.deviceId);
    const d = decideEnrollment({
      req,
      existing: existing && stripView(existing),
      pre: await this.repo.getPreauthorized(req.deviceId),
      fleetSecretHash: this.config.enrollmentSecretHash,
      defaults: { group: this.config.defaultGroup, channel: this.config.defaultChannel },
      tokenValid: Boolean(existing && currentToken && sameHash(hashToken(currentToken), existing.tokenHash)),
      now: this.clock(),
    });
    if (!d.ok) throw refused();
    if (!NAME_RE.test(d.group) || !NAME_RE.test(d.channel))
      throw new IbuError('BAD_REQUEST', 'group and channel must be short names of letters, digits, ".", "_" or "-".');
    if (d.claimSecret && !(await this.repo.claimFactorySecret(req.deviceId, d.claimSecret, this.clock()))) throw refused();
    const token = randomBytes(32).toString('base64url');
    const bound = { tokenHash: hashToken(token), publicKey: req.publicKey, keyProofAt: req.at };
    // Re-enrolling rotates the token and keeps the device's history, group and channel.
    const device: DeviceRecord = existing
      ? { ...stripView(existing), ...bound }
      : { ...newDevice(req.deviceId, bound.tokenHash, d.group, d.channel, this.clock()), ...bound };
    await this.committer.submit([{ kind: 'device', device }]);
    return { deviceId: req.deviceId, token };
  }

  /** Looks a device up and checks its token; an unknown id and a wrong token are one answer. */
  async authenticate(id: string, token: string | undefined): Promise<DeviceView> {
    const d = await this.repo.getDevice(id);
    const ok = sameHash(hashToken(token ?? ''), d?.tokenHash || NO_DEVICE_HASH);
    if (!d || !token || !ok) throw refused();
    return d;
  }

  /** An admin's action: forget the device's key and revoke its token; it enrolls again like a new device (keeping its place). */
  async resetIdentity(id: string): Promise<DeviceView> {
    await this.committer.flush();
    const d = await this.repo.getDevice(id);
    if (!d) throw new IbuError('DEVICE_UNKNOWN', `Device ${id} is not enrolled.`);
    const device: DeviceRecord = { ...stripView(d), tokenHash: '', publicKey: null, keyProofAt: null };
    await this.committer.submit([{ kind: 'device', device }]);
    await this.committer.flush();
    return { ...d, ...device };
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

  /**
   * The vendor's list of per-device factory secrets (id + sha256 of the secret): each id may then
   * enroll once with its own secret. Importing an id again re-arms it with the new secret.
   */
  async importFactorySecrets(devices: Array<{ id: string; secretHash: string }>, group?: string, channel?: string): Promise<number> {
    const bad = devices.find((d) => typeof d?.id !== 'string' || !DEVICE_ID_RE.test(d.id) || !/^[0-9a-f]{64}$/.test(String(d.secretHash)));
    if (!Array.isArray(devices) || bad)
      throw new IbuError('BAD_REQUEST', 'devices must be a list of { id, secretHash } with secretHash the sha256 hex of the secret.');
    const g = group ?? this.config.defaultGroup;
    const c = channel ?? this.config.defaultChannel;
    if (!NAME_RE.test(g) || !NAME_RE.test(c)) throw new IbuError('BAD_REQUEST', 'group and channel must be short names.');
    await this.repo.addPreauthorized(devices.map((d) => ({ id: d.id, group: g, channel: c, secretHash: d.secretHash })));
    return devices.length;
  }
}
