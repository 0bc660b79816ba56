import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareVersions, isValidVersion } from '../src/version.js';
import { isIbuError } from '../src/errors.js';

test('versions compare numerically, suffix sorts first', () => {
  const cases: Array<[string, string, number]> = [
    ['1', '2', -1],
    ['1.10', '1.9', 1],
    ['2026.11.2', '2026.11.2', 0],
    ['1.0', '1', 0],
    ['1.4.0-rc1', '1.4.0', -1],
    ['1.4.0-rc2', '1.4.0-rc1', 1],
    ['2-rc10', '2-rc9', 1],
    ['3-rc9', '3-rc10', -1],
    ['2-beta2', '2-rc1', -1],
    ['2-rc1.10', '2-rc1.9', 1],
    ['2-rc', '2-rc1', -1],
    ['2-9', '2-rc', -1],
  ];
  for (const [a, b, want] of cases) assert.equal(compareVersions(a, b), want, `${a} vs ${b}`);
});

test('invalid versions are refused with VERSION_INVALID', () => {
  for (const v of ['', '../1', '1..2', 'a', '1.2/3']) {
    assert.equal(isValidVersion(v), false, v);
    assert.throws(
      () => compareVersions(v, '1'),
      (e) => isIbuError(e, 'VERSION_INVALID'),
    );
  }
});
