import { test } from 'node:test';
import assert from 'node:assert/strict';
import { badAndStarted, DEFAULT_ROLLOUT_SPEC, decide, emptyStatusCounts, offeredBy, resolveRolloutSpec } from '../../src/fleet/rollout-policy.js';
import type { RolloutDevice, RolloutRecord } from '../../src/fleet/types.js';
import { isIbuError } from '../../src/errors.js';

const rollout = (over: Partial<RolloutRecord> = {}): RolloutRecord => ({
  id: 1,
  channel: 'stable',
  version: '2',
  spec: { ...DEFAULT_ROLLOUT_SPEC, waves: [10, 100], minSample: 10, maxFailureRatio: 0.1, successRatio: 0.9 },
  state: 'running',
  wave: 0,
  waveStartedAt: 0,
  createdAt: 0,
  updatedAt: 0,
  reason: null,
  baselineBad: 0,
  baselineStarted: 0,
  ...over,
});

test('rollout policy: pause on bad ratio past the sample, advance on success, complete at the end', () => {
  const c = emptyStatusCounts();
  c.succeeded = 8;
  c['rolled-back'] = 1;
  assert.deepEqual(decide(rollout(), { byStatus: c, waveDevices: 100, waveDone: 50, now: 1 }), { kind: 'none' }, '9 started < minSample 10');
  c.silent = 1;
  const d = decide(rollout(), { byStatus: c, waveDevices: 100, waveDone: 50, now: 1 });
  assert.equal(d.kind, 'pause', '2 bad of 10 > 10%');
  assert.match((d as { reason: string }).reason, /1 rolled back, 1 silent of 10 started/);
  assert.equal(
    decide(rollout({ baselineBad: 2, baselineStarted: 10 }), { byStatus: c, waveDevices: 100, waveDone: 50, now: 1 }).kind,
    'none',
    'acknowledged by resume',
  );
  assert.equal(
    decide(rollout({ spec: { ...rollout().spec, maxFailures: 2 } }), { byStatus: { ...emptyStatusCounts(), failed: 2 }, waveDevices: 1, waveDone: 0, now: 1 })
      .kind,
    'pause',
  );
  const ok = { ...emptyStatusCounts(), succeeded: 95 };
  assert.deepEqual(decide(rollout(), { byStatus: ok, waveDevices: 100, waveDone: 95, now: 1 }), { kind: 'advance', wave: 1 });
  assert.equal(
    decide(rollout({ spec: { ...rollout().spec, minWaveSeconds: 60 } }), { byStatus: ok, waveDevices: 100, waveDone: 95, now: 59_000 }).kind,
    'none',
    'soak time',
  );
  assert.equal(decide(rollout({ wave: 1 }), { byStatus: ok, waveDevices: 100, waveDone: 95, now: 1 }).kind, 'complete');
  assert.equal(decide(rollout({ state: 'paused' }), { byStatus: ok, waveDevices: 100, waveDone: 100, now: 1 }).kind, 'none');
});

test('rollout spec: defaults filled, every problem reported', () => {
  assert.deepEqual(resolveRolloutSpec(undefined).waves, [1, 10, 50, 100]);
  assert.throws(
    () => resolveRolloutSpec({ waves: [10, 5], successRatio: 2, minSample: -1 }),
    (e) =>
      isIbuError(e, 'ROLLOUT_INVALID') &&
      /increase/.test(e.message) &&
      /last wave must be 100/.test(e.message) &&
      /successRatio/.test(e.message) &&
      /minSample/.test(e.message),
  );
});

test('bad and started: failed, rolled back and silent are bad; every status past targeted started', () => {
  const c = { ...emptyStatusCounts(), targeted: 100, applying: 1, trial: 2, succeeded: 3, failed: 4, 'rolled-back': 5, silent: 6 };
  assert.deepEqual(badAndStarted(c), { bad: 15, started: 21 });
});

test('offered by a rollout: one line per rollout state', () => {
  const part = (status: RolloutDevice['status']): RolloutDevice => ({
    rolloutId: 1,
    deviceId: 'd',
    wave: 0,
    status,
    fromVersion: '1',
    updatedAt: 0,
    deadline: null,
    errorCode: null,
    errorMessage: null,
  });
  const idle = { trial: false, version: '1' };
  const inFirstWave = { bucket: 0, group: 'x' };
  const inLastWave = { bucket: 9999, group: 'x' };
  const cases: Array<
    [string, RolloutRecord | undefined, { bucket: number; group: string }, RolloutDevice | null, { trial: boolean; version: string }, boolean]
  > = [
    ['no rollout: everyone', undefined, inLastWave, null, idle, true],
    ['completed: everyone', rollout({ state: 'completed' }), inLastWave, null, idle, true],
    ['aborted: nobody', rollout({ state: 'aborted' }), inFirstWave, null, idle, false],
    ['running: the open wave', rollout(), inFirstWave, null, idle, true],
    ['running: not a later wave', rollout(), inLastWave, null, idle, false],
    ['paused: nobody new', rollout({ state: 'paused' }), inFirstWave, part('targeted'), idle, false],
    ['paused: an applying device finishes', rollout({ state: 'paused' }), inFirstWave, part('applying'), idle, true],
    ['paused: a device in trial of it finishes', rollout({ state: 'paused' }), inFirstWave, null, { trial: true, version: '2' }, true],
  ];
  for (const [why, r, d, p, req, want] of cases) assert.equal(offeredBy(r, d, p, req, 0), want, why);
});

test('a ramped wave opens in bucket order at rampPercentPerMinute; a device once offered stays offered', () => {
  // waves 10 % and 100 %; the second opened at t = 1,000 s, ramping 10 % of the fleet per minute
  const spec = { ...DEFAULT_ROLLOUT_SPEC, waves: [10, 100], rampPercentPerMinute: 10 };
  const r = rollout({ spec, wave: 1, waveStartedAt: 1_000_000 });
  const idle = { trial: false, version: '1' };
  const at = (bucket: number, now: number, p: RolloutDevice | null = null) => offeredBy(r, { bucket, group: 'x' }, p, idle, now);
  assert.equal(at(500, 1_000_000), true, 'the earlier wave stays offered');
  assert.equal(at(1000, 1_000_000), true, "the wave's first bucket at once");
  // bucket 5,999 is 49.99 % of the fleet into the wave: at 10 %/min, about 300 s after the wave opened
  assert.equal(at(5999, 1_000_000 + 299_000), false);
  assert.equal(at(5999, 1_000_000 + 300_000), true);
  assert.equal(at(9999, 1_000_000 + 539_000), false, 'the last bucket about 9 minutes in');
  assert.equal(at(9999, 1_000_000 + 540_000), true);
  const part: RolloutDevice = {
    rolloutId: 1,
    deviceId: 'd',
    wave: 1,
    status: 'targeted',
    fromVersion: '1',
    updatedAt: 0,
    deadline: null,
    errorCode: null,
    errorMessage: null,
  };
  assert.equal(at(9999, 1_000_000, part), true, 'a device already taking part is not held back');
  // a canary group is offered at once (its size is the vendor's choice); the 10 % wave after it ramps
  const canary = rollout({ spec: { ...spec, canaryGroups: ['lab'] }, wave: 0, waveStartedAt: 0 });
  assert.equal(offeredBy(canary, { bucket: 5000, group: 'lab' }, null, idle, 0), true);
  const firstWave = rollout({ spec: { ...spec, canaryGroups: ['lab'] }, wave: 1, waveStartedAt: 0 });
  assert.equal(offeredBy(firstWave, { bucket: 600, group: 'x' }, null, idle, 35_000), false, '6 % into the wave: 36 s');
  assert.equal(offeredBy(firstWave, { bucket: 600, group: 'x' }, null, idle, 36_000), true);
  assert.equal(
    offeredBy(rollout({ spec: { ...spec, rampPercentPerMinute: 0 }, wave: 1, waveStartedAt: 5 }), { bucket: 9999, group: 'x' }, null, idle, 5),
    true,
    '0: at once',
  );
});
