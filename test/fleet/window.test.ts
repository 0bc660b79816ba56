import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inWindow, localTime, validateWindow } from '../../src/fleet/window.js';
import { isIbuError } from '../../src/errors.js';

test('maintenance windows: time zones by Intl, ranges past midnight, DST', () => {
  const w = validateWindow({
    timeZone: 'Europe/Berlin',
    rules: [
      { days: [6], start: '22:00', end: '02:00' },
      { days: [1, 2, 3], start: '01:00', end: '03:00' },
    ],
  });
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
  assert.throws(
    () => validateWindow({ timeZone: 'Nowhere/City', rules: [] }),
    (e) => isIbuError(e, 'CONFIG_INVALID') && /timeZone/.test(e.message) && /rules/.test(e.message),
  );
  assert.throws(
    () => validateWindow({ timeZone: 'UTC', rules: [{ days: [7], start: '1:00', end: '24:00' }] }),
    (e) => isIbuError(e, 'CONFIG_INVALID') && /days.*start.*end/s.test(e.message),
  );
});
