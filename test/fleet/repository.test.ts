import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { FleetRepository } from '../../src/fleet/repository.js';
import type { DeviceRecord, RolloutDevice, WriteOp } from '../../src/fleet/types.js';
import { DEFAULT_ROLLOUT_SPEC } from '../../src/fleet/rollout-policy.js';
import pg from 'pg';
import { BACKENDS, PG_URL } from './backends.js';

const device = (id: string, over: Partial<DeviceRecord> = {}): DeviceRecord => ({
  id,
  tokenHash: 'ab'.repeat(32),
  group: 'default',
  channel: 'stable',
  bucket: 42,
  version: '1',
  state: 'idle',
  trial: false,
  committedVersion: '1',
  maxCommitted: '1',
  preparedVersion: null,
  freeBytes: 2 ** 40,
  lastErrorCode: null,
  lastErrorMessage: null,
  lastCheckin: 1_764_000_000_000,
  checkins: 1,
  flags: [],
  enrolledAt: 1_764_000_000_000,
  rolloutId: null,
  publicKey: 'k'.repeat(43),
  keyProofAt: 1_764_000_000_000,
  ...over,
});

// One contract, two implementations: whatever SQLite answers, PostgreSQL must answer too.
for (const backend of BACKENDS) {
  describe(`fleet repository contract on ${backend.name}`, { skip: backend.skip }, () => {
    let repo: FleetRepository;
    let cleanup: () => Promise<void>;
    before(async () => {
      ({ repo, cleanup } = await backend.make());
      await repo.init();
      await repo.init(); // idempotent
    });
    after(async () => cleanup?.());

    test('devices round-trip exactly, batches are atomic, last write wins', async () => {
      const d = device('a', { flags: ['downgraded'], lastErrorCode: 'X', lastErrorMessage: 'über "quoted" \n text', freeBytes: 2 ** 52 });
      await repo.writeBatch([{ kind: 'device', device: d }]);
      const got = await repo.getDevice('a');
      assert.deepEqual(got, { ...d, participation: null });
      const ops: WriteOp[] = [];
      for (let i = 0; i < 2500; i++)
        ops.push({ kind: 'device', device: device(`bulk-${String(i).padStart(4, '0')}`, { version: i % 3 === 0 ? '2' : '1', bucket: i % 10_000 }) });
      ops.push({ kind: 'device', device: device('bulk-0000', { version: '3', checkins: 7 }) });
      await repo.writeBatch(ops);
      assert.equal((await repo.getDevice('bulk-0000'))!.version, '3');
      assert.equal((await repo.getDevice('bulk-0000'))!.checkins, 7);
      assert.equal(await repo.deviceCount(), 2501);
      const page = await repo.listDevices('bulk-0099', 3);
      assert.deepEqual(
        page.map((x) => x.id),
        ['bulk-0100', 'bulk-0101', 'bulk-0102'],
      );
      // A batch that fails part way leaves nothing behind.
      const bad = { kind: 'device', device: { ...device('broken'), tokenHash: null } } as unknown as WriteOp;
      await assert.rejects(repo.writeBatch([{ kind: 'device', device: device('good-before-bad') }, bad]));
      assert.equal(await repo.getDevice('good-before-bad'), undefined);
      assert.equal(await repo.getDevice('missing'), undefined);
    });

    test('version histograms for the fleet, a channel and a wave', async () => {
      const all = await repo.versionCounts();
      assert.equal(
        all.reduce((n, v) => n + v.devices, 0),
        2501,
      );
      assert.equal(all[0]!.version, '1', 'most devices first');
      await repo.writeBatch([
        { kind: 'device', device: device('lab-1', { group: 'lab', bucket: 9999, version: '9' }) },
        { kind: 'device', device: device('other', { channel: 'beta', version: '9' }) },
      ]);
      const wave = await repo.versionCounts('stable', { bucketBelow: 100, groups: ['lab'] });
      const byV = Object.fromEntries(wave.map((v) => [v.version, v.devices]));
      assert.equal(byV['9'], 1, 'the canary group counts regardless of bucket; other channels do not');
      assert.equal(
        (byV['1'] ?? 0) + (byV['2'] ?? 0) + (byV['3'] ?? 0) + 1,
        wave.reduce((n, v) => n + v.devices, 0),
      );
      assert.deepEqual(await repo.versionCounts('beta'), [{ version: '9', devices: 1 }]);
      // A device that never checked in is part of its wave (version ''), not of the histogram.
      await repo.writeBatch([{ kind: 'device', device: device('fresh', { version: null, state: null, bucket: 0 }) }]);
      assert.equal((await repo.versionCounts('stable', { bucketBelow: 100, groups: [] })).find((v) => v.version === '')?.devices, 1);
      assert.equal(
        (await repo.versionCounts('stable')).some((v) => v.version === '' || v.version === null),
        false,
      );
    });

    test('rollouts, participation, counts and silence', async () => {
      await repo.upsertRelease({ channel: 'stable', version: '2', mandatory: true, manifestUrl: '/m/2', createdAt: 5, source: 'store' });
      await repo.upsertRelease({ channel: 'stable', version: '2', mandatory: false, manifestUrl: '/m/2b', createdAt: 6, source: 'api' });
      assert.deepEqual(await repo.listReleases(), [{ channel: 'stable', version: '2', mandatory: false, manifestUrl: '/m/2b', createdAt: 5, source: 'api' }]);
      const base = {
        channel: 'stable',
        version: '2',
        spec: DEFAULT_ROLLOUT_SPEC,
        state: 'running' as const,
        wave: 0,
        waveStartedAt: 1,
        createdAt: 1,
        updatedAt: 1,
        reason: null,
        baselineBad: 0,
        baselineStarted: 0,
      };
      const id = await repo.insertRollout(base);
      const id2 = await repo.insertRollout(base);
      assert.ok(id2 > id);
      await repo.updateRollout({ ...base, id, state: 'paused', reason: 'r', wave: 2, baselineBad: 3 });
      const rs = await repo.listRollouts();
      assert.deepEqual(rs[0], { ...base, id, state: 'paused', reason: 'r', wave: 2, baselineBad: 3 });
      const p = (dev: string, status: RolloutDevice['status'], deadline: number | null = null): WriteOp => ({
        kind: 'participation',
        row: {
          rolloutId: id,
          deviceId: dev,
          wave: 0,
          status,
          fromVersion: '1',
          updatedAt: 10,
          deadline,
          errorCode: status === 'failed' ? 'E' : null,
          errorMessage: null,
        },
      });
      await repo.writeBatch([
        p('a', 'applying', 100),
        p('bulk-0001', 'applying', 300),
        p('bulk-0002', 'failed'),
        p('bulk-0003', 'succeeded'),
        { kind: 'device', device: device('a', { rolloutId: id }) },
      ]);
      const a = await repo.getDevice('a');
      assert.equal(a!.participation!.status, 'applying');
      assert.equal(a!.participation!.deadline, 100);
      assert.equal(await repo.markSilent(id, 200), 1);
      assert.equal((await repo.getParticipation(id, 'a'))!.status, 'silent');
      const c = await repo.participationCounts(id);
      assert.deepEqual([c.silent, c.applying, c.failed, c.succeeded, c.targeted], [1, 1, 1, 1, 0]);
      const problems = await repo.problemDevices(10);
      assert.ok(problems.some((d) => d.id === 'a' && d.participation?.status === 'silent'));
      assert.equal(await repo.getParticipation(id2, 'a'), undefined);
    });

    test('groups, leases, pre-authorized ids, settings', async () => {
      const win = { timeZone: 'Europe/Berlin', rules: [{ days: [6], start: '22:00', end: '04:00' }] };
      await repo.upsertGroup({ name: 'g', window: win, maxConcurrentReboots: 3, leaseTtlSeconds: 60 });
      await repo.upsertGroup({ name: 'h', window: null, maxConcurrentReboots: 0, leaseTtlSeconds: 5 });
      assert.deepEqual(await repo.listGroups(), [
        { name: 'g', window: win, maxConcurrentReboots: 3, leaseTtlSeconds: 60 },
        { name: 'h', window: null, maxConcurrentReboots: 0, leaseTtlSeconds: 5 },
      ]);
      await repo.writeBatch([
        { kind: 'lease', lease: { deviceId: 'a', group: 'g', expiresAt: 99 } },
        { kind: 'lease', lease: { deviceId: 'b', group: 'g', expiresAt: 100 } },
        { kind: 'lease-delete', deviceId: 'b' },
      ]);
      assert.deepEqual(await repo.listLeases(), [{ deviceId: 'a', group: 'g', expiresAt: 99 }]);
      await repo.addPreauthorized([
        { id: 'p1', group: 'g', channel: 'beta' },
        { id: 'p1', group: 'h', channel: 'beta' },
      ]);
      assert.deepEqual(await repo.getPreauthorized('p1'), { group: 'h', channel: 'beta', secretHash: null, usedAt: null });
      assert.equal(await repo.getPreauthorized('p2'), undefined);
      // A factory secret is claimed once; a plain re-authorization keeps it, a new import re-arms it.
      await repo.addPreauthorized([{ id: 'f1', group: 'g', channel: 'beta', secretHash: 'aa'.repeat(32) }]);
      assert.equal(await repo.claimFactorySecret('f1', 'bb'.repeat(32), 5), false, 'another secret');
      assert.equal(await repo.claimFactorySecret('f1', 'aa'.repeat(32), 5), true);
      assert.equal(await repo.claimFactorySecret('f1', 'aa'.repeat(32), 6), false, 'used');
      await repo.addPreauthorized([{ id: 'f1', group: 'h', channel: 'beta' }]);
      assert.deepEqual(await repo.getPreauthorized('f1'), { group: 'h', channel: 'beta', secretHash: 'aa'.repeat(32), usedAt: 5 });
      await repo.addPreauthorized([{ id: 'f1', group: 'h', channel: 'beta', secretHash: 'cc'.repeat(32) }]);
      assert.deepEqual(await repo.getPreauthorized('f1'), { group: 'h', channel: 'beta', secretHash: 'cc'.repeat(32), usedAt: null });
      await repo.putSetting('k', { a: [1, 2] });
      await repo.putSetting('k', { a: [3] });
      assert.deepEqual(await repo.getSetting('k'), { a: [3] });
      assert.equal(await repo.getSetting('none'), undefined);
    });
  });
}

// The plugin test's CI run crashed here: DROP DATABASE ... WITH (FORCE) terminated an idle pool
// connection, and an 'error' on a pool with no listener is an uncaught exception.
const pgBackend = BACKENDS.find((b) => b.name === 'postgres')!;
test('PostgreSQL: the server dropping idle connections does not crash the process; the next query reconnects', { skip: pgBackend.skip }, async () => {
  const { repo, cleanup, url } = await pgBackend.make();
  try {
    await repo.init();
    await repo.putSetting('k', 1);
    const db = new URL(url!).pathname.slice(1);
    const admin = new pg.Client({ connectionString: PG_URL });
    await admin.connect();
    const killed = await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [db]);
    await admin.end();
    assert.ok(killed.rowCount! >= 1, 'an idle pool connection was there to terminate');
    const uncaught: Error[] = [];
    const onUncaught = (e: Error) => uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    await new Promise((r) => setTimeout(r, 200));
    process.off('uncaughtException', onUncaught);
    assert.deepEqual(uncaught, []);
    assert.equal(await repo.getSetting('k'), 1);
  } finally {
    await cleanup();
  }
});
