import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseExtentBlocks, subtractRanges } from '../../src/image/layout-stable.js';

test('journal blocks: the extents of debugfs stat, and the old journal minus the new one', () => {
  const stat = [
    'Inode: 8   Type: regular    Mode:  0600   Flags: 0x80000',
    'Size of extra inode fields: 32',
    'EXTENTS:',
    '(ETB0):9000, (0-4095):131072-135167, (4096-8190):140000-144094, (8191):150000',
  ].join('\n');
  assert.deepEqual(parseExtentBlocks(stat), [
    { start: 9000, end: 9000 },
    { start: 131072, end: 135167 },
    { start: 140000, end: 144094 },
    { start: 150000, end: 150000 },
  ]);
  assert.deepEqual(parseExtentBlocks('Inode: 8\nEXTENTS:\n(0-8191):163969-172160\n'), [{ start: 163969, end: 172160 }]);
  assert.deepEqual(parseExtentBlocks('Inode: 8   Type: bad type'), []);

  // Moved away: all of the old is freed. Same place: nothing. Overlapping: the ends that stick out.
  const old = [{ start: 131072, end: 139263 }];
  assert.deepEqual(subtractRanges(old, [{ start: 163969, end: 172160 }]), old);
  assert.deepEqual(subtractRanges(old, old), []);
  assert.deepEqual(subtractRanges(old, [{ start: 132000, end: 133000 }]), [
    { start: 131072, end: 131999 },
    { start: 133001, end: 139263 },
  ]);
  assert.deepEqual(subtractRanges(old, [{ start: 100000, end: 135000 }]), [{ start: 135001, end: 139263 }]);
});
