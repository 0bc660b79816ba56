import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GroupCommitter } from '../../src/fleet/group-commit.js';
import type { WriteOp } from '../../src/fleet/types.js';

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
