import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nextHop } from '../../src/fleet/upgrade-path.js';
import { BUCKETS, deviceBucket, effectiveWaves, waveOf } from '../../src/fleet/waves.js';
import { inWindow, localTime, validateWindow } from '../../src/fleet/window.js';
import { DEFAULT_ROLLOUT_SPEC, decide, emptyStatusCounts, resolveRolloutSpec } from '../../src/fleet/rollout-policy.js';
import { nextCheckinSeconds } from '../../src/fleet/schedule.js';
import { GroupCommitter } from '../../src/fleet/group-commit.js';
import type { ReleaseRecord, RolloutRecord, WriteOp } from '../../src/fleet/types.js';
import { isIbuError } from '../../src/errors.js';

const rel = (version: string, mandatory = false): ReleaseRecord => ({ channel: 'stable', version, mandatory, manifestUrl: `/m/${version}`, createdAt: 0, source: 'api' });

test('next hop: stepping stones are never skipped, the newest offered release otherwise', () => {
  const rs = [rel('1'), rel('2', true), rel('3'), rel('4')];
  const all = () => true;
  assert.equal(nextHop(rs, '1', all)?.version, '2');
  assert.equal(nextHop(rs, '2', all)?.version, '4');
  assert.equal(nextHop(rs, '3', all)?.version, '4');
  assert.equal(nextHop(rs, '4', all), null);
  assert.equal(nextHop(rs, '9', all), null, 'never a lower version');
  assert.equal(nextHop(rs, '2', (r) => r.version !== '4')?.version, '3', 'not yet offered: the best one that is');
  assert.equal(nextHop(rs, '1', (r) => r.version !== '2'), null, 'a stepping stone not offered blocks the path');
  assert.equal(nextHop([rel('1.10'), rel('1.9', true), rel('1.2')], '1.0', all)?.version, '1.9', 'numeric order, not string order');
});

test('waves: buckets are stable and uniform; canaries come first and stay in', () => {
  assert.equal(deviceBucket('box-42'), deviceBucket('box-42'));
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 20_000; i++) counts[Math.floor((deviceBucket(`dev-${i}`) / BUCKETS) * 10)]++;
  for (const c of counts) assert.ok(c > 1700 && c < 2300, `decile holds ${c} of 20000`);
  const waves = effectiveWaves({ ...DEFAULT_ROLLOUT_SPEC, waves: [1, 10, 100], canaryGroups: ['lab'] });
  assert.deepEqual(waves.map((w) => w.label), ['canary (lab)', '1%', '10%', '100%']);
  assert.equal(waveOf(waves, 9999, 'lab'), 0);
  assert.equal(waveOf(waves, 50, 'x'), 1);
  assert.equal(waveOf(waves, 500, 'x'), 2);
  assert.equal(waveOf(waves, 9999, 'x'), 3);
  assert.equal(waveOf(effectiveWaves({ ...DEFAULT_ROLLOUT_SPEC, waves: [50, 100] }), 9999, 'x'), 1);
});

test('maintenance windows: time zones by Intl, ranges past midnight, DST', () => {
  const w = validateWindow({ timeZone: 'Europe/Berlin', rules: [{ days: [6], start: '22:00', end: '02:00' }, { days: [1, 2, 3], start: '01:00', end: '03:00' }] });
  // Saturday 2026-11-28 21:30 UTC = 22:30 in Berlin (CET): inside.
  assert.equal(inWindow(w, new Date(Date.UTC(2026, 10, 28, 21, 30))), true);
  // Sunday 00:30 UTC = 01:30 Berlin: still Saturday's rule, wrapped.
  assert.equal(inWindow(w, new Date(Date.UTC(2026, 10, 29, 0, 30))), true);
  // Sunday 01:30 UTC = 02:30 Berlin: after the end.
  assert.equal(inWindow(w, new Date(Date.UTC(2026, 10, 29, 1, 30))), false);
  // Monday 00:30 UTC = 01:30 Berlin: the weekday rule.
  assert.equal(inWindow(w, new Date(Date.UTC(2026, 10, 30, 0, 30))), true);
  // Summer time: Tuesday 2026-07-07 23:30 UTC = Wednesday 01:30 CEST.
  assert.equal(inWindow(w, new Date(Date.UTC(2026, 6, 7, 23, 30))), true);
  assert.deepEqual(localTime(new Date(Date.UTC(2026, 6, 7, 23, 30)), 'Europe/Berlin'), { day: 3, minute: 90 });
  assert.equal(inWindow(null, new Date()), true);
  assert.throws(() => validateWindow({ timeZone: 'Nowhere/City', rules: [] }), (e) => isIbuError(e, 'CONFIG_INVALID') && /timeZone/.test(e.message) && /rules/.test(e.message));
  assert.throws(() => validateWindow({ timeZone: 'UTC', rules: [{ days: [7], start: '1:00', end: '24:00' }] }), (e) => isIbuError(e, 'CONFIG_INVALID') && /days.*start.*end/s.test(e.message));
});

const rollout = (over: Partial<RolloutRecord> = {}): RolloutRecord => ({
  id: 1, channel: 'stable', version: '2', spec: { ...DEFAULT_ROLLOUT_SPEC, waves: [10, 100], minSample: 10, maxFailureRatio: 0.1, successRatio: 0.9 }, state: 'running',
  wave: 0, waveStartedAt: 0, createdAt: 0, updatedAt: 0, reason: null, baselineBad: 0, baselineStarted: 0, ...over,
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
  assert.equal(decide(rollout({ baselineBad: 2, baselineStarted: 10 }), { byStatus: c, waveDevices: 100, waveDone: 50, now: 1 }).kind, 'none', 'acknowledged by resume');
  assert.equal(decide(rollout({ spec: { ...rollout().spec, maxFailures: 2 } }), { byStatus: { ...emptyStatusCounts(), failed: 2 }, waveDevices: 1, waveDone: 0, now: 1 }).kind, 'pause');
  const ok = { ...emptyStatusCounts(), succeeded: 95 };
  assert.deepEqual(decide(rollout(), { byStatus: ok, waveDevices: 100, waveDone: 95, now: 1 }), { kind: 'advance', wave: 1 });
  assert.equal(decide(rollout({ spec: { ...rollout().spec, minWaveSeconds: 60 } }), { byStatus: ok, waveDevices: 100, waveDone: 95, now: 59_000 }).kind, 'none', 'soak time');
  assert.equal(decide(rollout({ wave: 1 }), { byStatus: ok, waveDevices: 100, waveDone: 95, now: 1 }).kind, 'complete');
  assert.equal(decide(rollout({ state: 'paused' }), { byStatus: ok, waveDevices: 100, waveDone: 100, now: 1 }).kind, 'none');
});

test('rollout spec: defaults filled, every problem reported', () => {
  assert.deepEqual(resolveRolloutSpec(undefined).waves, [1, 10, 50, 100]);
  assert.throws(() => resolveRolloutSpec({ waves: [10, 5], successRatio: 2, minSample: -1 }), (e) =>
    isIbuError(e, 'ROLLOUT_INVALID') && /increase/.test(e.message) && /last wave must be 100/.test(e.message) && /successRatio/.test(e.message) && /minSample/.test(e.message));
});

test('next check-in: jitter stays within bounds', () => {
  for (let i = 0; i < 1000; i++) {
    const s = nextCheckinSeconds(3600, 0.2);
    assert.ok(s >= 2880 && s <= 4320, String(s));
  }
  assert.equal(nextCheckinSeconds(100, 0.2, () => 0.5), 100);
});

test('group commit: one write per turn of the event loop, every caller waits for it', async () => {
  const writes: number[] = [];
  const gc = new GroupCommitter(async (ops) => {
    writes.push(ops.length);
  }, 1000);
  const op: WriteOp = { kind: 'lease-delete', deviceId: 'x' };
  await Promise.all(Array.from({ length: 50 }, () => gc.submit([op, op])));
  assert.deepEqual(writes, [100]);
  const failing = new GroupCommitter(async () => {
    throw new Error('disk on fire');
  });
  await assert.rejects(Promise.all([failing.submit([op]), failing.submit([op])]), /disk on fire/);
});
