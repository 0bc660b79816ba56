import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deviceAfterCheckin, isBusy, validateCheckin, validateEvent } from '../../src/fleet/checkin.js';
import { newDevice } from '../../src/fleet/enrollment.js';
import type { CheckinRequest, DeviceEvent } from '../../src/fleet/protocol.js';
import type { RolloutDevice } from '../../src/fleet/types.js';
import { isIbuError } from '../../src/errors.js';

const NOW = 5000;
const device = (over = {}) => ({ ...newDevice('d1', 'hash', 'g', 'stable', 0), ...over });

test('a check-in updates the record and flags a downgrade once', () => {
  const { device: d, downgrade } = deviceAfterCheckin(
    device({ maxCommitted: '2', committedVersion: '2', checkins: 4 }),
    { version: '3', state: 'trial', trial: true },
    NOW,
  );
  assert.deepEqual(
    [d.version, d.state, d.trial, d.committedVersion, d.maxCommitted, d.checkins, d.lastCheckin],
    ['3', 'trial', true, '2', '2', 5, NOW],
    'a trial does not commit',
  );
  assert.equal(downgrade, null);
  const down = deviceAfterCheckin(device({ maxCommitted: '3' }), { version: '2', state: 'idle', trial: false }, NOW);
  assert.deepEqual(down.device.flags, ['downgraded']);
  assert.equal(down.device.maxCommitted, '3', 'the highest stays');
  assert.equal(down.downgrade?.errorCode, 'VERSION_DOWNGRADE');
  assert.equal(deviceAfterCheckin(down.device, { version: '2', state: 'idle', trial: false }, NOW).downgrade, null, 'flagged once');
  const before = device({ lastErrorCode: 'X', freeBytes: 7 });
  const kept = deviceAfterCheckin(before, { version: '1', state: 'idle', trial: false }, NOW).device;
  assert.deepEqual([kept.lastErrorCode, kept.freeBytes], ['X', 7], 'what the report leaves out is kept');
  assert.equal(deviceAfterCheckin(before, { version: '1', state: 'idle', trial: false, lastError: null }, NOW).device.lastErrorCode, null);
  assert.equal(before.checkins, 0, 'the input is not changed');
});

test('short check-in interval only while waiting for a lease or mid-upgrade', () => {
  const part = (status: RolloutDevice['status']) => ({ status }) as RolloutDevice;
  const r = (state: CheckinRequest['state'], extra: Partial<CheckinRequest> = {}): CheckinRequest => ({ version: '1', state, trial: false, ...extra });
  const cases: Array<[string, CheckinRequest, boolean, RolloutDevice | null, boolean]> = [
    ['idle', r('idle'), false, null, false],
    ['prepared, no lease asked', r('prepared'), false, null, true],
    ['prepared, lease granted', r('prepared', { wantRebootLease: true }), true, null, true],
    ['prepared, lease refused', r('prepared', { wantRebootLease: true }), false, null, false],
    ['applying', r('applying'), false, null, true],
    ['in trial', r('committed', { trial: true }), false, null, true],
    ['participation applying', r('idle'), false, part('applying'), true],
    ['participation targeted', r('idle'), false, part('targeted'), false],
  ];
  for (const [why, req, granted, p, want] of cases) assert.equal(isBusy(req, granted, p), want, why);
});

test('reports are checked, every problem at once', () => {
  assert.throws(
    () => validateCheckin({ version: 'x', state: 'dancing', trial: 'no' } as unknown as CheckinRequest),
    (e) => isIbuError(e, 'BAD_REQUEST') && /version.*state.*trial/s.test(e.message),
  );
  assert.throws(
    () => validateEvent({ type: 'exploded', fromVersion: '1', toVersion: '2' } as unknown as DeviceEvent),
    (e) => isIbuError(e, 'BAD_REQUEST'),
  );
  validateEvent({ type: 'apply-started', fromVersion: '1', toVersion: '2' });
});
