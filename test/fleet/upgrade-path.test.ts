import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nextHop } from '../../src/fleet/upgrade-path.js';
import type { ReleaseRecord } from '../../src/fleet/types.js';

const rel = (version: string, mandatory = false): ReleaseRecord => ({
  channel: 'stable',
  version,
  mandatory,
  manifestUrl: `/m/${version}`,
  createdAt: 0,
  source: 'api',
});

test('next hop: stepping stones are never skipped, the newest offered release otherwise', () => {
  const rs = [rel('1'), rel('2', true), rel('3'), rel('4')];
  const all = () => true;
  assert.equal(nextHop(rs, '1', all)?.version, '2');
  assert.equal(nextHop(rs, '2', all)?.version, '4');
  assert.equal(nextHop(rs, '3', all)?.version, '4');
  assert.equal(nextHop(rs, '4', all), null);
  assert.equal(nextHop(rs, '9', all), null, 'never a lower version');
  assert.equal(nextHop(rs, '2', (r) => r.version !== '4')?.version, '3', 'not yet offered: the best one that is');
  assert.equal(
    nextHop(rs, '1', (r) => r.version !== '2'),
    null,
    'a stepping stone not offered blocks the path',
  );
  assert.equal(nextHop([rel('1.10'), rel('1.9', true), rel('1.2')], '1.0', all)?.version, '1.9', 'numeric order, not string order');
});
