import { compareVersions } from '../version.js';
import type { CheckinRequest, DeviceEvent } from './protocol.js';
import type { DeviceRecord, ParticipationStatus, RolloutDevice, RolloutRecord } from './types.js';
import { effectiveWaves, waveOf } from './waves.js';

/**
 * How a device's participation in a rollout moves: from a check-in, from an event, and when a
 * reboot lease starts the upgrade. Pure; each returns the same row when nothing changes, so the
 * caller writes only real changes.
 */

/** The row a device gets when it first meets a rollout (targeted, in the wave of its bucket or group). */
export function newParticipation(r: RolloutRecord, d: Pick<DeviceRecord, 'id' | 'bucket' | 'group'>, fromVersion: string, now: number): RolloutDevice {
  return {
    rolloutId: r.id,
    deviceId: d.id,
    wave: Math.max(0, waveOf(effectiveWaves(r.spec), d.bucket, d.group)),
    status: 'targeted',
    fromVersion,
    updatedAt: now,
    deadline: null,
    errorCode: null,
    errorMessage: null,
  };
}

/** A check-in's effect on the device's participation in rollout r. */
export function participationFromCheckin(p: RolloutDevice, r: RolloutRecord, req: CheckinRequest, now: number): RolloutDevice {
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

/** A granted reboot lease for the targeted release: from here on the device must come back, and silence counts. */
export function participationFromLease(p: RolloutDevice, silentMs: number, now: number): RolloutDevice {
  if (p.status !== 'targeted') return p;
  return { ...p, status: 'applying', updatedAt: now, deadline: now + silentMs };
}

/** An event's effect on the device's participation in the rollout of the event's target version. */
export function participationFromEvent(p: RolloutDevice, ev: DeviceEvent, silentMs: number, now: number): RolloutDevice {
  const errorCode = ev.error?.code ?? null;
  const errorMessage = ev.error?.message ?? null;
  switch (ev.type) {
    case 'apply-started':
      return { ...p, status: 'applying', deadline: now + silentMs, updatedAt: now };
    case 'upgrade-succeeded':
      return { ...p, status: 'succeeded', deadline: null, updatedAt: now, errorCode: null, errorMessage: null };
    case 'upgrade-failed':
    case 'prepare-failed':
      return {
        ...p,
        status: 'failed',
        deadline: null,
        updatedAt: now,
        errorCode: errorCode ?? 'FAILED',
        errorMessage: errorMessage ?? `${ev.type} without details`,
      };
    case 'rolled-back':
      return {
        ...p,
        status: 'rolled-back',
        deadline: null,
        updatedAt: now,
        errorCode: errorCode ?? 'ROLLED_BACK',
        errorMessage: errorMessage ?? `rolled back from ${ev.toVersion}`,
      };
    default:
      return p;
  }
}
