import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { openDb } from '../../src/server/db.js';
import { DeltaJobs, PRIORITY } from '../../src/server/delta-jobs.js';
import type { DeltaQueue, RetryPolicy } from '../../src/server/delta-queue.js';
import { PostgresDeltaQueue } from '../../src/server/postgres-delta-queue.js';
import { scratchDatabase, tmpDir } from './helpers.js';

/**
 * The delta queue's contract, run against both implementations: SQLite (the one-server default)
 * and a real PostgreSQL (IBU_TEST_PG; a fresh database per run). Times are passed in, so nothing
 * here waits on a clock.
 */
const RETRY: RetryPolicy = { maxAttempts: 2, baseMs: 1000, maxMs: 10_000, failedCooldownMs: 60_000 };
const pgSkip = !process.env.IBU_TEST_PG && !process.env.CI ? 'needs IBU_TEST_PG (bash scripts/postgres.sh start)' : false;

interface QueueBackend {
  name: string;
  skip: string | false;
  open(): Promise<{ jobs: DeltaQueue; done(): Promise<void> }>;
}

const BACKENDS: QueueBackend[] = [
  {
    name: 'SQLite',
    skip: false,
    async open() {
      const dir = tmpDir('jobs');
      const db = openDb(path.join(dir, 'server.sqlite'));
      return {
        jobs: new DeltaJobs(db, RETRY),
        async done() {
          db.close();
          rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  },
  {
    name: 'PostgreSQL',
    skip: pgSkip,
    async open() {
      const d = await scratchDatabase('queue');
      // Claims that never expire here: the times below jump ahead; leases have tests of their own.
      const jobs = await PostgresDeltaQueue.open(d.url, tmpDir('queue-deltas'), { retry: RETRY, leaseMs: 1e12 });
      return {
        jobs,
        async done() {
          await jobs.close();
          await d.drop();
        },
      };
    },
  },
];

for (const backend of BACKENDS) {
  describe(`the delta queue on ${backend.name}`, { skip: backend.skip }, () => {
    let jobs: DeltaQueue;
    let done: () => Promise<void> = async () => {};
    before(async () => {
      ({ jobs, done } = await backend.open());
    });
    after(() => done());

    it('orders device requests before precompute, first come first served within a priority', async () => {
      await jobs.request('1', '4', PRIORITY.precompute, 100);
      await jobs.request('2', '4', PRIORITY.precompute, 101);
      await jobs.request('3', '4', PRIORITY.device, 102);
      assert.equal(await jobs.position((await jobs.get('3', '4'))!), 0);
      assert.equal(await jobs.position((await jobs.get('1', '4'))!), 1);
      assert.equal(await jobs.position((await jobs.get('2', '4'))!), 2);
      // A device asking for a queued precompute pair moves it up to device priority, where its
      // earlier request time puts it first.
      const again = await jobs.request('2', '4', PRIORITY.device, 103);
      assert.equal(again.created, false);
      assert.equal(await jobs.position((await jobs.get('2', '4'))!), 0);
      const claimed = [(await jobs.claimNext(200))!.from, (await jobs.claimNext(200))!.from, (await jobs.claimNext(200))!.from];
      assert.deepEqual(claimed, ['2', '3', '1']);
      assert.equal(await jobs.claimNext(200), undefined);
    });

    it('asks the same pair many times, concurrently: one row, one claim', async () => {
      const asks = await Promise.all(Array.from({ length: 200 }, (_, i) => jobs.request('5', '6', PRIORITY.device, 300 + i)));
      assert.equal(asks.filter((a) => a.created).length, 1);
      assert.equal((await jobs.all()).filter((j) => j.from === '5').length, 1);
      assert.ok(await jobs.claimNext(2000));
      assert.equal(await jobs.claimNext(2000), undefined, 'a building job is not claimed twice');
    });

    it('backs off between attempts, then fails, and revives after the cool-down', async () => {
      await jobs.request('7', '8', PRIORITY.device, 5000);
      const j = (await jobs.claimNext(5000))!;
      assert.equal(j.attempts, 1);
      const retry = await jobs.markFailed('7', '8', 'boom', 5000);
      assert.equal(retry.state, 'queued');
      assert.equal(retry.nextAttemptAt, 6000);
      assert.equal((await jobs.claimNext(5999))?.from === '7', false, 'not before its time');
      assert.equal((await jobs.claimNext(6000))!.attempts, 2);
      const failed = await jobs.markFailed('7', '8', 'boom again', 6000);
      assert.equal(failed.state, 'failed');
      assert.equal(failed.lastError, 'boom again');
      assert.equal((await jobs.request('7', '8', PRIORITY.device, 6000 + 59_999)).job.state, 'failed');
      const revived = await jobs.request('7', '8', PRIORITY.device, 6000 + 60_000);
      assert.equal(revived.job.state, 'queued');
      assert.equal(revived.job.attempts, 0);
    });

    it('puts a build stopped by shutdown back without counting the attempt', async () => {
      await jobs.request('9', '10', PRIORITY.device, 7000);
      await jobs.claimNext(7000);
      assert.equal(await jobs.holds('9', '10'), true);
      await jobs.requeue('9', '10');
      const j = (await jobs.get('9', '10'))!;
      assert.deepEqual([j.state, j.attempts], ['queued', 0]);
    });

    it('keeps the ready bytes and the LRU order, and evicts only what is still ready', async () => {
      await jobs.request('a', 'b', PRIORITY.device, 8000);
      await jobs.request('c', 'b', PRIORITY.device, 8001);
      for (const from of ['9', 'a', 'c']) {
        const claimed = await jobs.claimNext(8002);
        assert.ok(claimed);
        assert.equal(await jobs.markReady(claimed.from, claimed.to, from === 'a' ? 100 : 50, 'f'.repeat(64), 8002), true);
      }
      await jobs.touch('a', 'b', 9000);
      await jobs.touch('9', '10', 9001);
      assert.equal(await jobs.readyBytes(), 200);
      assert.deepEqual(
        (await jobs.readyByLru()).map((j) => j.from),
        ['c', 'a', '9'],
      );
      assert.equal(await jobs.evictReady('c', 'b'), true);
      assert.equal(await jobs.evictReady('c', 'b'), false, 'a second eviction pass finds it gone');
      assert.equal(await jobs.evictReady('1', '4'), false, 'a building job is not evicted');
      assert.equal(await jobs.readyBytes(), 150);
    });

    it('keeps the pairs check-ins named (the demand table), the newest time, until pruned', async () => {
      assert.equal(await jobs.demandNotedAt('d1', 'd2'), undefined);
      await jobs.noteDemand('d1', 'd2', 1000);
      await jobs.noteDemand('d1', 'd2', 3000);
      await jobs.noteDemand('d3', 'd2', 1500);
      assert.equal(await jobs.demandNotedAt('d1', 'd2'), 3000);
      await jobs.pruneDemand(2000);
      assert.equal(await jobs.demandNotedAt('d3', 'd2'), undefined);
      assert.equal(await jobs.demandNotedAt('d1', 'd2'), 3000);
    });

    if (backend.name === 'SQLite') {
      it('at start puts every job left building back, the attempt counted (one process owns the file)', async () => {
        await jobs.request('11', '12', PRIORITY.device, 10_000);
        await jobs.claimNext(10_000);
        assert.equal(await jobs.recoverInterrupted(), 5, 'every job left building (4 from the tests above)');
        const j = (await jobs.get('11', '12'))!;
        assert.deepEqual([j.state, j.attempts], ['queued', 1]);
      });
    }
  });
}

describe('the PostgreSQL queue between builders: leases, takeover, one queue per delta directory', { skip: pgSkip }, () => {
  let d: { url: string; drop: () => Promise<void> };
  const opened: PostgresDeltaQueue[] = [];
  /** A builder process on the database; its claims are held for 1 s unless renewed. */
  let dir: string;
  const builder = async (deltaDir = dir): Promise<PostgresDeltaQueue> => {
    const q = await PostgresDeltaQueue.open(d.url, deltaDir, { retry: RETRY, leaseMs: 1000 });
    opened.push(q);
    return q;
  };
  before(async () => {
    d = await scratchDatabase('lease');
    dir = tmpDir('lease-deltas');
  });
  after(async () => {
    for (const q of opened) await q.close();
    await d.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes over a claim whose builder stopped renewing it, and fences the old builder out', async () => {
    const [a, b] = [await builder(), await builder()];
    await a.request('20', '21', PRIORITY.device, 20_000);
    assert.equal((await a.claimNext(20_000))?.from, '20');
    assert.equal(await b.claimNext(20_500), undefined, 'the lease (1 s) still runs');
    assert.equal(await a.renewClaims(20_900), 1, 'renewed: the one job a builds');
    assert.equal(await b.claimNext(21_500), undefined, 'renewed until 21.9 s');
    assert.equal(await b.nextDue(), 21_900, "b wakes when a's lease runs out");
    const taken = (await b.claimNext(22_000))!;
    assert.deepEqual([taken.from, taken.attempts], ['20', 2], 'taken over, the attempt counted');
    assert.equal(await a.holds('20', '21'), false);
    assert.equal(await a.markReady('20', '21', 1, 'e'.repeat(64), 22_100), false, 'the old owner cannot write the result');
    await a.requeue('20', '21');
    assert.equal((await a.get('20', '21'))!.state, 'building', "nor give the new owner's job back");
    assert.equal(await b.markReady('20', '21', 1, 'e'.repeat(64), 22_100), true);
  });

  it('fails a job whose builder died on its last attempt instead of building it forever', async () => {
    const [a, b, c] = [await builder(), await builder(), await builder()];
    await a.request('30', '31', PRIORITY.device, 30_000);
    await a.claimNext(30_000);
    assert.equal((await b.claimNext(31_001))?.attempts, 2, 'the last attempt');
    assert.equal(await c.claimNext(32_002), undefined, 'out of attempts: not claimed again');
    const j = (await c.get('30', '31'))!;
    assert.equal(j.state, 'failed');
    assert.match(j.lastError ?? '', /stopped renewing/);
  });

  it('keeps one queue per delta directory: replicas share builds only where they share the files', async () => {
    const other = tmpDir('other-deltas');
    try {
      const [a, b, c] = [await builder(), await builder(), await builder(other)];
      assert.equal(a.scope, b.scope, 'one directory, one id');
      assert.notEqual(a.scope, c.scope);
      assert.equal((await a.request('40', '41', PRIORITY.device, 40_000)).created, true);
      assert.equal((await b.request('40', '41', PRIORITY.device, 40_000)).created, false, 'the same job');
      assert.equal((await c.request('40', '41', PRIORITY.device, 40_000)).created, true, 'a directory of its own: a job of its own');
      assert.equal((await c.claimNext(40_000))?.from, '40');
      assert.equal(await c.claimNext(40_000), undefined, "the other directory's jobs are not c's to build");
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });
});
