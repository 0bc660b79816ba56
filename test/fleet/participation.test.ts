import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newParticipation, participationFromCheckin, participationFromEvent, participationFromLease } from '../../src/fleet/participation.js';
import type { CheckinRequest, DeviceEvent } from '../../src/fleet/protocol.js';
import { DEFAULT_ROLLOUT_SPEC } from '../../src/fleet/rollout-policy.js';
import type { ParticipationStatus, RolloutDevice, RolloutRecord } from '../../src/fleet/types.js';

const NOW = 1_000_000;
const SILENT_MS = DEFAULT_ROLLOUT_SPEC.silentAfterSeconds * 1000;
const rollout: RolloutRecord = {
  id: 7,
  channel: 'stable',
  version: '2.0',
  spec: DEFAULT_ROLLOUT_SPEC,
  state: 'running',
  wave: 0,
  waveStartedAt: 0,
  createdAt: 0,
  updatedAt: 0,
  reason: null,
  baselineBad: 0,
  baselineStarted: 0,
};
const row = (status: ParticipationStatus, deadline: number | null = null): RolloutDevice => ({
  rolloutId: 7,
  deviceId: 'd1',
  wave: 0,
  status,
  fromVersion: '1.0',
  updatedAt: 0,
  deadline,
  errorCode: null,
  errorMessage: null,
});
const checkin = (version: string, state: CheckinRequest['state'], trial = false, lastError?: CheckinRequest['lastError']): CheckinRequest => ({
  version,
  state,
  trial,
  ...(lastError !== undefined ? { lastError } : {}),
});

test('new participation: targeted, in the wave of the device, from the version it runs', () => {
  const p = newParticipation(rollout, { id: 'd1', bucket: 0, group: 'default' }, '1.0', NOW);
  assert.deepEqual(p, { ...row('targeted'), updatedAt: NOW });
});

test('participation from a check-in: one line per transition', () => {
  // [from status, check-in, expected status (same = unchanged row), expected error code]
  const cases: Array<[ParticipationStatus, CheckinRequest, ParticipationStatus | 'same', string | null]> = [
    ['targeted', checkin('1.0', 'idle'), 'same', null],
    ['targeted', checkin('1.0', 'preparing'), 'same', null],
    ['targeted', checkin('2.0', 'committed'), 'succeeded', null],
    ['targeted', checkin('2.1', 'committed'), 'succeeded', null],
    ['applying', checkin('2.0', 'trial', true), 'trial', null],
    ['trial', checkin('2.0', 'committed'), 'succeeded', null],
    ['applying', checkin('1.0', 'applying'), 'applying', null],
    ['silent', checkin('1.0', 'applying'), 'applying', null],
    ['applying', checkin('1.0', 'idle'), 'rolled-back', 'ROLLED_BACK'],
    ['trial', checkin('1.0', 'idle', false, { code: 'HEALTH_FAILED', message: 'x' }), 'rolled-back', 'HEALTH_FAILED'],
    ['silent', checkin('1.0', 'idle'), 'rolled-back', 'ROLLED_BACK'],
    ['targeted', checkin('1.0', 'failed'), 'failed', 'FAILED'],
    ['targeted', checkin('1.0', 'failed', false, { code: 'NO_SPACE', message: 'full' }), 'failed', 'NO_SPACE'],
    ['applying', checkin('1.0', 'failed'), 'rolled-back', 'ROLLED_BACK'],
    ['targeted', checkin('1.5', 'rolled-back'), 'rolled-back', 'ROLLED_BACK'],
    ['rolled-back', checkin('1.0', 'rolled-back'), 'same', null],
    ['failed', checkin('1.0', 'idle'), 'same', null],
  ];
  for (const [from, req, want, code] of cases) {
    const p = row(from, from === 'applying' ? 5 : null);
    const next = participationFromCheckin(p, rollout, req, NOW);
    const label = `${from} + ${req.version}/${req.state}${req.trial ? '/trial' : ''}`;
    if (want === 'same') {
      assert.equal(next, p, `${label}: unchanged`);
      continue;
    }
    assert.equal(next.status, want, label);
    assert.equal(next.errorCode, code, `${label}: error code`);
    assert.equal(next.updatedAt, NOW, `${label}: updatedAt`);
    assert.equal(next.deadline, want === 'applying' ? NOW + SILENT_MS : null, `${label}: deadline only while applying`);
  }
});

test('participation from a lease: a targeted device starts applying and owes a check-in', () => {
  assert.deepEqual(participationFromLease(row('targeted'), SILENT_MS, NOW), { ...row('applying'), updatedAt: NOW, deadline: NOW + SILENT_MS });
  for (const s of ['applying', 'trial', 'succeeded', 'failed'] as const) {
    const p = row(s);
    assert.equal(participationFromLease(p, SILENT_MS, NOW), p, `${s}: unchanged`);
  }
});

test('participation from an event: one line per event type', () => {
  const ev = (type: DeviceEvent['type'], error?: DeviceEvent['error']): DeviceEvent => ({
    type,
    fromVersion: '1.0',
    toVersion: '2.0',
    ...(error ? { error } : {}),
  });
  // [event, expected status, deadline, error code]
  const cases: Array<[DeviceEvent, ParticipationStatus, number | null, string | null]> = [
    [ev('apply-started'), 'applying', NOW + SILENT_MS, null],
    [ev('upgrade-succeeded'), 'succeeded', null, null],
    [ev('upgrade-failed'), 'failed', null, 'FAILED'],
    [ev('prepare-failed', { code: 'NO_SPACE', message: 'full' }), 'failed', null, 'NO_SPACE'],
    [ev('rolled-back'), 'rolled-back', null, 'ROLLED_BACK'],
  ];
  for (const [e, status, deadline, code] of cases) {
    const next = participationFromEvent(row('targeted'), e, SILENT_MS, NOW);
    assert.deepEqual([next.status, next.deadline, next.errorCode, next.updatedAt], [status, deadline, code, NOW], e.type);
  }
});
