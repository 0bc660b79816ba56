import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { signed } from '../helpers/enroll.js';
import { Fleet, hashToken } from '../../src/fleet/fleet.js';
import type { CheckinRequest, CheckinResponse } from '../../src/fleet/protocol.js';
import type { FleetRepository } from '../../src/fleet/repository.js';
import type { WriteOp } from '../../src/fleet/types.js';
import { isIbuError } from '../../src/errors.js';
import { BACKENDS } from './backends.js';

// The same suite runs against SQLite and a real PostgreSQL server. A fake clock drives time.
for (const backend of BACKENDS) {
  describe(`fleet service on ${backend.name}`, { skip: backend.skip }, () => {
    let repo: FleetRepository;
    let cleanup: () => Promise<void>;
    let svc: Fleet;
    let now = Date.UTC(2026, 10, 25, 12, 0, 0); // a Wednesday
    const tokens = new Map<string, string>();

    before(async () => {
      ({ repo, cleanup } = await backend.make());
      svc = new Fleet(repo, { enrollmentSecretHash: hashToken('s3cret'), jitter: 0.1 }, undefined, () => now);
      await svc.start();
    });
    after(async () => {
      await svc?.close().catch(() => {});
      await cleanup?.();
    });

    const enroll = async (id: string, group = 'default') => {
      const r = await svc.enroll(signed({ deviceId: id, enrollmentSecret: 's3cret', group }, now));
      tokens.set(id, r.token);
      return r;
    };
    const checkin = (id: string, body: Partial<CheckinRequest> & { version: string }): Promise<CheckinResponse> =>
      svc.checkin(id, tokens.get(id), { state: 'idle', trial: false, ...body });

    test('enrollment: secret or pre-authorization, token stored only as a hash', async () => {
      const r = await enroll('dev-a');
      assert.equal(r.token.length >= 40, true);
      const d = await repo.getDevice('dev-a');
      assert.equal(d!.tokenHash, hashToken(r.token));
      assert.notEqual(d!.tokenHash, r.token);
      await assert.rejects(svc.enroll(signed({ deviceId: 'dev-x', enrollmentSecret: 'wrong' }, now)), (e) => isIbuError(e, 'UNAUTHORIZED'));
      await assert.rejects(svc.enroll(signed({ deviceId: 'dev-x' }, now)), (e) => isIbuError(e, 'UNAUTHORIZED'));
      await assert.rejects(svc.enroll(signed({ deviceId: '../etc' }, now)), (e) => isIbuError(e, 'BAD_REQUEST'));
      await svc.preauthorize(['pre-1'], 'lab', 'stable');
      const p = await svc.enroll(signed({ deviceId: 'pre-1', group: 'ignored' }, now));
      tokens.set('pre-1', p.token);
      assert.equal((await repo.getDevice('pre-1'))!.group, 'lab');
      await assert.rejects(svc.checkin('dev-a', 'not-the-token', { version: '1', state: 'idle', trial: false }), (e) => isIbuError(e, 'UNAUTHORIZED'));
      await assert.rejects(svc.checkin('nobody', 'x', { version: '1', state: 'idle', trial: false }), (e) => isIbuError(e, 'UNAUTHORIZED'));
      await assert.rejects(checkin('dev-a', { version: 'x/1' }), (e) => isIbuError(e, 'BAD_REQUEST'));
    });

    test('one upgrade path: mandatory stepping stones, never a downgrade target', async () => {
      await svc.registerRelease({ version: '1' });
      await svc.registerRelease({ version: '2', mandatory: true });
      await svc.registerRelease({ version: '3' });
      await svc.registerRelease({ version: '4' });
      let r = await checkin('dev-a', { version: '1' });
      assert.equal(r.target?.version, '2');
      assert.equal(r.target?.mandatory, true);
      assert.equal(r.target?.manifestUrl, '/v1/releases/2/manifest');
      r = await checkin('dev-a', { version: '2' });
      assert.equal(r.target?.version, '4');
      r = await checkin('dev-a', { version: '4' });
      assert.equal(r.target, null);
      r = await checkin('dev-a', { version: '5' });
      assert.equal(r.target, null, 'a device ahead of the channel is never sent back');
      assert.ok(r.nextCheckinSeconds >= 3600 * 0.9 && r.nextCheckinSeconds <= 3600 * 1.1, String(r.nextCheckinSeconds));
      assert.equal(r.deltaReady, false);
    });

    test('anti-downgrade: a device reporting a lower committed version is flagged', async () => {
      await checkin('pre-1', { version: '4' });
      let d = await svc.device('pre-1');
      assert.deepEqual(d.flags, []);
      await checkin('pre-1', { version: '3' });
      d = await svc.device('pre-1');
      assert.deepEqual(d.flags, ['downgraded']);
      assert.equal(d.maxCommitted, '4');
      const problems = await svc.problems(10);
      assert.ok(problems.some((p) => p.id === 'pre-1'));
    });

    test('staged rollout: waves advance on success, pause on rollbacks and silence, resume, complete', async () => {
      await svc.registerRelease({ version: '5' });
      await svc.setGroup({ name: 'canary' });
      const ids: string[] = [];
      for (let i = 0; i < 200; i++) {
        const id = `fleet-${i}`;
        ids.push(id);
        await enroll(id, i < 3 ? 'canary' : 'default');
        await checkin(id, { version: '4' });
      }
      const ro = await svc.createRollout({
        version: '5',
        spec: { waves: [10, 50, 100], canaryGroups: ['canary'], successRatio: 0.9, maxFailureRatio: 0.1, minSample: 5, silentAfterSeconds: 600 },
      });
      await assert.rejects(svc.createRollout({ version: '5' }), (e) => isIbuError(e, 'CONFLICT'));
      await assert.rejects(svc.createRollout({ version: '9' }), (e) => isIbuError(e, 'RELEASE_NOT_FOUND'));
      await assert.rejects(svc.createRollout({ version: '4', spec: { waves: [50, 10] } }), (e) => isIbuError(e, 'ROLLOUT_INVALID'));

      // Wave 0 is the canary group only.
      const offered = async () => {
        const got: string[] = [];
        for (const id of ids) if ((await checkin(id, { version: (await svc.device(id)).version! })).target?.version === '5') got.push(id);
        return got;
      };
      let got = await offered();
      assert.deepEqual(got.sort(), ['fleet-0', 'fleet-1', 'fleet-2']);
      // The canaries upgrade: lease, reboot, trial, commit.
      for (const id of got) {
        const l = await checkin(id, { version: '4', state: 'prepared', preparedVersion: '5', wantRebootLease: true });
        assert.equal(l.rebootLease.granted, true);
        await svc.event(id, tokens.get(id), { type: 'apply-started', fromVersion: '4', toVersion: '5' });
        await checkin(id, { version: '5', trial: true, state: 'trial', committedVersion: '4' });
        await svc.event(id, tokens.get(id), { type: 'upgrade-succeeded', fromVersion: '4', toVersion: '5' });
        await checkin(id, { version: '5', state: 'committed' });
      }
      assert.equal((await svc.activeLeases()).length, 0, 'success returns the lease');
      await svc.evaluate();
      let view = await svc.rolloutView(ro.id);
      assert.equal(view.wave, 1);
      assert.equal(view.counts.succeeded, 3);

      // Wave 1 (10%): roughly 20 devices; they all succeed by check-in alone.
      got = await offered();
      const inWave1 = got.filter((id) => !['fleet-0', 'fleet-1', 'fleet-2'].includes(id));
      assert.ok(inWave1.length > 5 && inWave1.length < 40, `10% of 200 is ~20, got ${inWave1.length}`);
      for (const id of inWave1) await checkin(id, { version: '5', state: 'committed' });
      await svc.evaluate();
      view = await svc.rolloutView(ro.id);
      assert.equal(view.wave, 2, 'the 50% wave opens');

      // Wave 2: some devices roll back (old version after apply-started), some go silent.
      got = (await offered()).filter((id) => !inWave1.includes(id) && !['fleet-0', 'fleet-1', 'fleet-2'].includes(id));
      assert.ok(got.length > 40, `50% wave offers more devices, got ${got.length}`);
      const [rb1, rb2, s1, s2, s3, ...rest] = got;
      for (const id of [rb1!, rb2!]) {
        await svc.event(id, tokens.get(id), { type: 'apply-started', fromVersion: '4', toVersion: '5' });
        await checkin(id, { version: '4', state: 'rolled-back', lastError: { code: 'HEALTH_CHECK_FAILED', message: 'nginx did not start' } });
      }
      for (const id of [s1!, s2!, s3!]) {
        const l = await checkin(id, { version: '4', state: 'prepared', preparedVersion: '5', wantRebootLease: true });
        assert.equal(l.rebootLease.granted, true);
      }
      for (const id of rest.slice(0, 10)) await checkin(id, { version: '5', state: 'committed' });
      await svc.evaluate();
      assert.equal(svc.rollout(ro.id).state, 'running', '2 bad of ~35 started is under the 10% threshold');
      now += 601_000; // the three rebooting devices never come back
      await svc.evaluate();
      view = await svc.rolloutView(ro.id);
      assert.equal(view.counts.silent, 3);
      assert.equal(view.counts['rolled-back'], 2);
      assert.equal(view.state, 'paused', `5 bad of ~38 started passes 10%: ${view.reason}`);
      assert.match(view.reason!, /failure ratio/);
      const problems = await svc.problems(100);
      const rbRow = problems.find((p) => p.id === rb1);
      assert.equal(rbRow?.participation?.status, 'rolled-back');
      assert.equal(rbRow?.participation?.errorCode, 'HEALTH_CHECK_FAILED');

      // Paused: nobody new gets the release.
      const idle = rest[rest.length - 1]!;
      assert.equal((await checkin(idle, { version: '4' })).target, null);
      // A silent device that comes back on the new version counts as success again.
      await checkin(s1!, { version: '5', state: 'committed' });
      assert.equal((await repo.getParticipation(ro.id, s1!))?.status, 'succeeded');

      await assert.rejects(svc.pause(ro.id), (e) => isIbuError(e, 'CONFLICT'));
      await svc.resume(ro.id);
      assert.equal(svc.rollout(ro.id).state, 'running');
      await svc.evaluate();
      assert.equal(svc.rollout(ro.id).state, 'running', 'failures acknowledged by resume do not pause again');
      for (const id of ids) {
        const d = await svc.device(id);
        if (d.version !== '5' && ![rb1, rb2, s2, s3].includes(id)) await checkin(id, { version: '5', state: 'committed' });
      }
      await svc.evaluate(); // wave 2 done -> 100%
      await svc.evaluate(); // 100% done -> completed
      view = await svc.rolloutView(ro.id);
      assert.equal(view.state, 'completed', view.reason ?? '');
      // Completed: offered to everyone, including the ones that rolled back.
      assert.equal((await checkin(rb1!, { version: '4' })).target?.version, '5');
    });

    test('abort withdraws a release from the path', async () => {
      await svc.registerRelease({ version: '6' });
      const ro = await svc.createRollout({ version: '6', spec: { waves: [100] } });
      assert.equal((await checkin('fleet-10', { version: '5' })).target?.version, '6');
      await svc.abort(ro.id);
      assert.equal((await checkin('fleet-10', { version: '5' })).target, null);
      const again = await svc.createRollout({ version: '6', spec: { waves: [100] } });
      assert.equal(again.state, 'running');
    });

    test('reboot leases: TTL, per-group concurrency, only inside the window', async () => {
      await svc.setGroup({ name: 'racks', maxConcurrentReboots: 2, leaseTtlSeconds: 300 });
      for (const id of ['r1', 'r2', 'r3']) {
        await enroll(id, 'racks');
        await checkin(id, { version: '6' });
      }
      const want = (id: string) => checkin(id, { version: '6', wantRebootLease: true });
      assert.equal((await want('r1')).rebootLease.granted, true);
      assert.equal((await want('r2')).rebootLease.granted, true);
      assert.equal((await want('r3')).rebootLease.granted, false, 'third concurrent reboot refused');
      assert.equal((await want('r1')).rebootLease.granted, true, 'a holder keeps its lease');
      await svc.releaseLease('r1', tokens.get('r1'));
      assert.equal((await want('r3')).rebootLease.granted, true, 'released early, given to the next');
      now += 301_000;
      await svc.evaluate();
      assert.equal((await svc.activeLeases('racks')).length, 0, 'leases expire after their TTL');
      // A full group is remembered until its first lease expires; expiry frees a slot without an evaluation.
      assert.equal((await want('r1')).rebootLease.granted, true);
      assert.equal((await want('r2')).rebootLease.granted, true);
      assert.equal((await want('r3')).rebootLease.granted, false, 'full again');
      assert.equal((await want('r3')).rebootLease.granted, false, 'still full (answered from the remembered expiry)');
      now += 301_000;
      assert.equal((await want('r3')).rebootLease.granted, true, 'the expired leases made room before any evaluation');
      assert.deepEqual(
        (await svc.activeLeases('racks')).map((l) => l.deviceId),
        ['r3'],
      );
      await svc.releaseLease('r3', tokens.get('r3'));
      // Window: Wednesdays 02:00-04:00 in Tokyo. It is 12:00 UTC = 21:00 in Tokyo.
      const win = { timeZone: 'Asia/Tokyo', rules: [{ days: [3], start: '02:00', end: '04:00' }] };
      await svc.setGroup({ name: 'racks', maxConcurrentReboots: 2, leaseTtlSeconds: 300, window: win });
      const r = await want('r1');
      assert.deepEqual(r.window, win);
      assert.equal(r.rebootLease.granted, false, 'outside the window');
      now = Date.UTC(2026, 10, 24, 18, 30); // Tue 18:30 UTC = Wed 03:30 Tokyo
      assert.equal((await want('r1')).rebootLease.granted, true, 'inside the window');
      await assert.rejects(
        svc.setGroup({ name: 'racks', window: { timeZone: 'Mars/Olympus', rules: [{ days: [9], start: '25:00', end: 'x' }] } }),
        (e) => isIbuError(e, 'CONFIG_INVALID') && /timeZone.*days.*start.*end/s.test(e.message),
      );
    });

    test('state survives a restart of the service on the same database', async () => {
      const before = await svc.versionCounts();
      const rollouts = svc.listRollouts().map((r) => [r.id, r.state]);
      await svc.updateSettings({ checkinIntervalSeconds: 60, enrollmentSecret: 'other' });
      await svc.close();
      ({ repo } = await reopen(backend.name, repo));
      svc = new Fleet(repo, {}, undefined, () => now);
      await svc.start();
      assert.deepEqual(await svc.versionCounts(), before);
      assert.deepEqual(
        svc.listRollouts().map((r) => [r.id, r.state]),
        rollouts,
      );
      assert.equal(svc.config.checkinIntervalSeconds, 60);
      await svc.enroll(signed({ deviceId: 'late', enrollmentSecret: 'other' }, now));
      await assert.rejects(svc.enroll(signed({ deviceId: 'late2', enrollmentSecret: 's3cret' }, now)), (e) => isIbuError(e, 'UNAUTHORIZED'));
      assert.equal((await svc.activeLeases('racks')).length, 1, 'leases are persisted');
    });

    // Reopens a repository on the same database (a server restart).
    async function reopen(name: string, old: FleetRepository): Promise<{ repo: FleetRepository }> {
      if (name === 'sqlite') {
        const { SqliteFleetRepository } = await import('../../src/fleet/sql/sqlite-repository.js');
        return { repo: new SqliteFleetRepository((old as unknown as { db: { name: string } }).db.name) };
      }
      const { PostgresFleetRepository } = await import('../../src/fleet/sql/postgres-repository.js');
      return { repo: new PostgresFleetRepository((old as unknown as { pool: { options: { connectionString: string } } }).pool.options.connectionString) };
    }
  });
}

// Expired leases are written in the background; a failed write must reach the log, not vanish.
test('expired-lease writes that fail are reported', async () => {
  const { repo, cleanup } = await BACKENDS[0]!.make();
  let now = Date.UTC(2026, 10, 25, 12, 0, 0);
  const reported: Array<{ err: unknown; what: string }> = [];
  let failDeletes = false;
  const writeBatch = (ops: readonly WriteOp[]) =>
    failDeletes && ops.some((o) => o.kind === 'lease-delete') ? Promise.reject(new Error('disk gone')) : repo.writeBatch(ops);
  const flaky = new Proxy(repo, {
    get: (target, key) => {
      if (key === 'writeBatch') return writeBatch;
      const v = Reflect.get(target, key) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  const svc = new Fleet(
    flaky,
    { enrollmentSecretHash: hashToken('s') },
    undefined,
    () => now,
    (err, what) => reported.push({ err, what }),
  );
  try {
    await svc.start();
    const { token } = await svc.enroll(signed({ deviceId: 'd1', enrollmentSecret: 's' }, now));
    assert.equal((await svc.checkin('d1', token, { version: '1', state: 'prepared', trial: false, wantRebootLease: true })).rebootLease.granted, true);
    now += 3600_000;
    failDeletes = true;
    await svc.evaluate();
    await svc.versionCounts(); // flushes the group commit: the failed write has been reported by now
    assert.equal(reported.length, 1);
    assert.match(reported[0]!.what, /1 expired reboot lease/);
    assert.equal((reported[0]!.err as Error).message, 'disk gone');
    assert.equal((await svc.activeLeases()).length, 0, 'the slot is free in memory all the same');
  } finally {
    failDeletes = false;
    await svc.close().catch(() => {});
    await cleanup();
  }
});
