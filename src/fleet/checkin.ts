import { IbuError } from '../errors.js';
import { compareVersions, isValidVersion } from '../version.js';
import { BOOT_EVENT_TYPES, NOTE_EVENT_TYPES, type CheckinRequest, type DeviceEvent, type DeviceEventType, type DeviceState } from './protocol.js';
import type { DeviceRecord, FleetEvent, RolloutDevice } from './types.js';

/** What a device reports, checked, and what a report changes on its record. Pure. */

const STATES: readonly DeviceState[] = ['idle', 'preparing', 'prepared', 'applying', 'trial', 'committed', 'rolled-back', 'failed'];
const EVENT_TYPES: readonly DeviceEventType[] = [
  'prepare-failed',
  'apply-started',
  'upgrade-succeeded',
  'upgrade-failed',
  'rolled-back',
  ...BOOT_EVENT_TYPES,
  ...NOTE_EVENT_TYPES,
];

export function validateCheckin(req: CheckinRequest): void {
  const problems: string[] = [];
  if (!req || typeof req !== 'object') throw new IbuError('BAD_REQUEST', 'A check-in body is a JSON object (see src/fleet/protocol.ts).');
  if (!isValidVersion(String(req.version))) problems.push(`version '${String(req.version)}' is not a valid version`);
  if (!STATES.includes(req.state)) problems.push(`state must be one of ${STATES.join(', ')}`);
  if (typeof req.trial !== 'boolean') problems.push('trial must be true or false');
  for (const k of ['committedVersion', 'preparedVersion'] as const) {
    if (req[k] !== undefined && req[k] !== null && !isValidVersion(String(req[k]))) problems.push(`${k} '${String(req[k])}' is not a valid version`);
  }
  // Stored as a BIGINT (PostgreSQL refuses 0.5 or 2^63 there): bytes are a whole number within 2^53.
  const free = req.freeBytes as unknown;
  if (free !== undefined && free !== null && !(Number.isSafeInteger(free) && (free as number) >= 0)) {
    problems.push(`freeBytes ${String(free)} is not a whole number of bytes`);
  }
  if (problems.length) throw new IbuError('BAD_REQUEST', `The check-in is invalid: ${problems.join('; ')}.`, { details: { problems } });
}

export function validateEvent(ev: DeviceEvent): void {
  if (!ev || !EVENT_TYPES.includes(ev.type)) throw new IbuError('BAD_REQUEST', `Event type must be one of ${EVENT_TYPES.join(', ')}.`);
  if (!isValidVersion(String(ev.fromVersion)) || !isValidVersion(String(ev.toVersion)))
    throw new IbuError('BAD_REQUEST', 'fromVersion and toVersion must be valid versions such as 2026.11.2.');
  if (ev.method !== undefined && !['reboot', 'kexec', 'soft-reboot'].includes(ev.method))
    throw new IbuError('BAD_REQUEST', 'method must be reboot, kexec or soft-reboot when given.');
}

function maxVersion(a: string | null, b: string | null): string | null {
  if (!a) return b;
  if (!b) return a;
  return compareVersions(a, b) >= 0 ? a : b;
}

/**
 * The device record after a check-in, and the downgrade it reveals, if any: a device whose
 * committed version went below the highest it ever committed was flashed or rolled back by
 * hand, and is flagged for the operator (once).
 */
export function deviceAfterCheckin(before: DeviceRecord, req: CheckinRequest, now: number): { device: DeviceRecord; downgrade: FleetEvent | null } {
  const d: DeviceRecord = { ...before, flags: [...before.flags] };
  let downgrade: FleetEvent | null = null;
  const committed = req.committedVersion ?? (req.trial ? null : req.version);
  if (committed && d.maxCommitted && compareVersions(committed, d.maxCommitted) < 0 && !d.flags.includes('downgraded')) {
    d.flags = [...d.flags, 'downgraded'];
    downgrade = {
      deviceId: d.id,
      type: 'downgrade-detected',
      fromVersion: d.maxCommitted,
      toVersion: committed,
      at: now,
      errorCode: 'VERSION_DOWNGRADE',
      errorMessage: `reported committed version ${committed} is below ${d.maxCommitted}, committed before`,
    };
  }
  // Back on its committed image: the boot fallback is over (the event stays in the log).
  if (!req.trial && committed && req.version === committed) d.flags = d.flags.filter((f) => f !== 'boot-fallback');
  d.maxCommitted = maxVersion(d.maxCommitted, committed);
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
  return { device: d, downgrade };
}

/**
 * Whether the device should come back at the short (active) interval: only while it waits for a
 * lease or is mid-upgrade. A device with a fresh target prepares first and calls back by itself
 * when it wants to reboot; a device refused a lease waits a regular interval (polling fast would
 * only add load).
 */
export function isBusy(req: CheckinRequest, leaseGranted: boolean, part: RolloutDevice | null): boolean {
  return (
    (req.state === 'prepared' && (!req.wantRebootLease || leaseGranted)) ||
    req.state === 'applying' ||
    req.state === 'trial' ||
    req.trial ||
    (part !== null && (part.status === 'applying' || part.status === 'trial'))
  );
}
