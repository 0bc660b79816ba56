import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nextCheckinSeconds } from '../../src/fleet/schedule.js';

test('next check-in: jitter stays within bounds', () => {
  for (let i = 0; i < 1000; i++) {
    const s = nextCheckinSeconds(3600, 0.2);
    assert.ok(s >= 2880 && s <= 4320, String(s));
  }
  assert.equal(
    nextCheckinSeconds(100, 0.2, () => 0.5),
    100,
  );
});
