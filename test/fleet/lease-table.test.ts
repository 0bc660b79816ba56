import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LeaseTable } from '../../src/fleet/lease-table.js';
import type { WriteOp } from '../../src/fleet/types.js';

// Steps on one table, narrated: [at ms, action, device, expected granted (grant) or active count (expire)].
test('lease table: per-group limit, holders keep theirs, drops and expiry make room', () => {
  const t = new LeaseTable();
  const max = 2;
  const ttl = 100;
  const steps: Array<[number, 'grant' | 'drop' | 'expire', string, boolean | number, string]> = [
    [0, 'grant', 'a', true, 'first of two'],
    [0, 'grant', 'b', true, 'second of two'],
    [10, 'grant', 'c', false, 'group full'],
    [10, 'grant', 'a', true, 'a holder keeps its lease'],
    [20, 'drop', 'a', 1, 'dropped early'],
    [20, 'grant', 'c', true, 'the freed slot goes to the next'],
    [30, 'grant', 'd', false, 'full again (remembered until b expires at 100)'],
    [99, 'grant', 'd', false, 'still full'],
    [100, 'grant', 'd', true, 'b expired: room without an expire round'],
    [200, 'expire', '', 0, 'every lease ran out'],
  ];
  for (const [now, action, id, want, why] of steps) {
    const ops: WriteOp[] = [];
    if (action === 'grant') assert.equal(Boolean(t.grant(id, 'racks', max, ttl, now, ops)), want, why);
    else {
      if (action === 'drop') t.drop(id, ops);
      else t.expire(now, ops);
      assert.equal(t.active(now, 'racks').length, want, why);
    }
  }
});

test('lease table: writes say what changed', () => {
  const t = new LeaseTable();
  const ops: WriteOp[] = [];
  t.grant('a', 'g', 0, 50, 0, ops);
  t.grant('a', 'g', 0, 50, 10, ops); // held: nothing written
  t.expire(60, ops);
  t.drop('a', ops); // already gone: nothing written
  assert.deepEqual(ops, [
    { kind: 'lease', lease: { deviceId: 'a', group: 'g', expiresAt: 50 } },
    { kind: 'lease-delete', deviceId: 'a' },
  ]);
});

test('lease table: unlimited groups, other groups, reloading, a changed limit', () => {
  const t = new LeaseTable();
  const ops: WriteOp[] = [];
  for (let i = 0; i < 50; i++) assert.ok(t.grant(`u${i}`, 'open', 0, 10, 0, ops), 'max 0 = unlimited');
  t.load([
    { deviceId: 'x', group: 'g', expiresAt: 100 },
    { deviceId: 'y', group: 'h', expiresAt: 100 },
  ]);
  assert.equal(t.active(0).length, 2, 'load replaces the table');
  assert.equal(t.held('x', 0)?.expiresAt, 100);
  assert.equal(t.grant('z', 'g', 1, 10, 0, ops), undefined, 'g is full with x');
  assert.ok(t.grant('z', 'h2', 1, 10, 0, ops), 'another group has its own limit');
  t.groupChanged('g');
  assert.ok(t.grant('z2', 'g', 2, 10, 0, ops), 'a raised limit is seen at once');
});
