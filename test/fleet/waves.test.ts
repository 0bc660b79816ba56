import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BUCKETS, deviceBucket, effectiveWaves, waveOf } from '../../src/fleet/waves.js';
import { DEFAULT_ROLLOUT_SPEC } from '../../src/fleet/rollout-policy.js';

test('waves: buckets are stable and uniform; canaries come first and stay in', () => {
  assert.equal(deviceBucket('box-42'), deviceBucket('box-42'));
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 20_000; i++) counts[Math.floor((deviceBucket(`dev-${i}`) / BUCKETS) * 10)]++;
  for (const c of counts) assert.ok(c > 1700 && c < 2300, `decile holds ${c} of 20000`);
  const waves = effectiveWaves({ ...DEFAULT_ROLLOUT_SPEC, waves: [1, 10, 100], canaryGroups: ['lab'] });
  assert.deepEqual(
    waves.map((w) => w.label),
    ['canary (lab)', '1%', '10%', '100%'],
  );
  assert.equal(waveOf(waves, 9999, 'lab'), 0);
  assert.equal(waveOf(waves, 50, 'x'), 1);
  assert.equal(waveOf(waves, 500, 'x'), 2);
  assert.equal(waveOf(waves, 9999, 'x'), 3);
  assert.equal(waveOf(effectiveWaves({ ...DEFAULT_ROLLOUT_SPEC, waves: [50, 100] }), 9999, 'x'), 1);
});
