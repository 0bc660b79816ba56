import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { openDb } from '../../src/server/db.js';
import { DeltaJobs, PRIORITY } from '../../src/server/delta-jobs.js';
import { tmpDir } from './helpers.js';

describe('DeltaJobs (the SQLite queue)', () => {
  const dir = tmpDir('jobs');
  const db = openDb(path.join(dir, 'server.sqlite'));
  const jobs = new DeltaJobs(db, { maxAttempts: 2, baseMs: 1000, maxMs: 10_000, failedCooldownMs: 60_000 });
  after(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('orders device requests before precompute, first come first served within a priority', () => {
    jobs.request('1', '4', PRIORITY.precompute, 100);
    jobs.request('2', '4', PRIORITY.precompute, 101);
    jobs.request('3', '4', PRIORITY.device, 102);
    assert.equal(jobs.position(jobs.get('3', '4')!), 0);
    assert.equal(jobs.position(jobs.get('1', '4')!), 1);
    assert.equal(jobs.position(jobs.get('2', '4')!), 2);
    // A device asking for a queued precompute pair moves it up to device priority, where its
    // earlier request time puts it first.
    const again = jobs.request('2', '4', PRIORITY.device, 103);
    assert.equal(again.created, false);
    assert.equal(jobs.position(jobs.get('2', '4')!), 0);
    assert.deepEqual([jobs.claimNext(200)!.from, jobs.claimNext(200)!.from, jobs.claimNext(200)!.from], ['2', '3', '1']);
    assert.equal(jobs.claimNext(200), undefined);
  });

  it('asks the same pair many times: one row, one claim', () => {
    for (let i = 0; i < 1000; i++) jobs.request('5', '6', PRIORITY.device, 300 + i);
    assert.equal(jobs.all().filter((j) => j.from === '5').length, 1);
    assert.ok(jobs.claimNext(2000));
    assert.equal(jobs.claimNext(2000), undefined, 'a building job is not claimed twice');
  });

  it('backs off between attempts, then fails, and revives after the cool-down', () => {
    jobs.request('7', '8', PRIORITY.device, 5000);
    const j = jobs.claimNext(5000)!;
    assert.equal(j.attempts, 1);
    const retry = jobs.markFailed('7', '8', 'boom', 5000);
    assert.equal(retry.state, 'queued');
    assert.equal(retry.nextAttemptAt, 6000);
    assert.equal(jobs.claimNext(5999)?.from === '7', false, 'not before its time');
    assert.equal(jobs.claimNext(6000)!.attempts, 2);
    const failed = jobs.markFailed('7', '8', 'boom again', 6000);
    assert.equal(failed.state, 'failed');
    assert.equal(failed.lastError, 'boom again');
    assert.equal(jobs.request('7', '8', PRIORITY.device, 6000 + 59_999).job.state, 'failed');
    const revived = jobs.request('7', '8', PRIORITY.device, 6000 + 60_000);
    assert.equal(revived.job.state, 'queued');
    assert.equal(revived.job.attempts, 0);
  });

  it('puts interrupted builds back: shutdown does not count the attempt, a crash does', () => {
    jobs.request('9', '10', PRIORITY.device, 7000);
    jobs.claimNext(7000);
    jobs.requeue('9', '10');
    assert.deepEqual([jobs.get('9', '10')!.state, jobs.get('9', '10')!.attempts], ['queued', 0]);
    jobs.claimNext(7000);
    assert.equal(jobs.recoverInterrupted(), 5, 'every job left building (4 from the tests above)');
    assert.deepEqual([jobs.get('9', '10')!.state, jobs.get('9', '10')!.attempts], ['queued', 1]);
  });
});
